"""``CalibrateConfig``: every setting of a calibration run, validated once, shared by
``calibrate_dir``, ``calibrate_dir_ray`` and ``frerec calibrate`` (whose options are
generated from the fields below, so the three cannot drift apart)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

from ..engine.names import ALIASES, ENGINES, PRECISIONS, check_engine_settings

RETRIEVALS = ("exact", "prefilter")
RHM_STATS = ("shr", "rhm")


def _opt(default, help: str, flags: tuple = (), **cli):
    """A config field with its CLI option: ``flags`` (default --field-name) and the
    argparse keywords in ``cli``."""
    return field(default=default, metadata={"help": help, "flags": flags, "cli": cli})


@dataclass(frozen=True)
class CalibrateConfig:
    """The settings of one ``calibrate_dir`` run (see its docstring for the meaning)."""
    device: str = _opt("auto", "auto (cuda if present) | cpu | cuda | cuda:N")
    batch_size: int = _opt(16, "tiles gathered per step (never changes output bytes)",
                           type=int)
    seed: int = _opt(0, "seed of SHR's per-image noise", type=int)
    backend: str = _opt("auto", "auto|torch|cpp|triton|cuda for retrieval, SHR and ring pooling")
    resume: bool = _opt(True, "redo every file even if the manifest says it is done",
                        ("--no-resume",), action="store_false")
    k: int = _opt(200, "neighbours per image (default 200)", ("-k",), type=int)
    calibrate_real: bool = _opt(False, "inputs are real images, maybe in the index: exclude "
                                "each one's own entry (method §6)", ("--real",), action="store_true")
    workers: int = _opt(4, "decode and encode threads (default 4; use more on a fast GPU)",
                        type=int)
    threads: int | None = _opt(None, "compute threads: torch's pool and the RHM engine's, for "
                               "the run only (default: torch's current count, one per core)",
                               type=int)
    progress: bool = _opt(True, "no progress bar", ("-q", "--quiet"), action="store_false")
    overlap: float = _opt(0.25, "overlap of the tiles of images larger than the working "
                          "size, as a fraction of a tile (default 0.25)", type=float)
    model_batch: int | None = _opt(None, "fixed micro-batch of retrieval/SHR/RHM (default 8 "
                                   "on CPU, 32 on CUDA); outputs are identical for any "
                                   "--batch-size at a given value", type=int)
    files: tuple[str, ...] | None = _opt(None, "a text file listing the paths under SRC to "
                                         "calibrate, one per line (default: every image)",
                                         ("--files-from",), metavar="LIST")
    engine: str = _opt("auto", "how the RHM runs: auto (default: the fastest installed for "
                       "the device), eager (the module, the reference; alias torch), compile "
                       "(torch.compile), onnxruntime, openvino (CPU), tensorrt (CUDA)",
                       choices=ENGINES + tuple(ALIASES))
    precision: str = _opt("fp32", "the RHM's arithmetic: fp32 (default), bf16 (eager, "
                          "compile, openvino on CPUs with bf16, CUDA), fp16 (CUDA), int8 "
                          "(openvino on CPU with nncf: quantised on first use, calibrated "
                          "on the bundled real training slices)", choices=PRECISIONS)
    retrieval: str = _opt("exact", "exact SSIM against the whole index (default), or "
                          "prefilter: a short-list by embedding correlation re-ranked by "
                          "exact SSIM, for large indexes (its recall is measured and "
                          "reported)", choices=RETRIEVALS)
    candidates: int | None = _opt(None, "prefilter short-list per image (default max(4k, "
                                  "1024))", type=int)
    follow_symlinks: bool = _opt(False, "read symbolic links that lead outside SRC (default: "
                                 "skip and report them)", action="store_true")
    shr: bool = _opt(True, "skip retrieval and SHR: the RHM alone on the input (the "
                     "ablation 'RHM without SHR')", ("--no-shr",), action="store_false")
    rhm_stats: str = _opt("shr", "whose high-band statistics the output keeps when SHR and "
                          "the RHM both run: shr (default: SHR's sampled real-neighbour "
                          "statistics are set again on the RHM's output, so the RHM reshapes "
                          "the band but cannot undo SHR's alignment) or rhm (the RHM's output "
                          "as it is, the paper's literal method); docs/rhm_quality.md",
                          choices=RHM_STATS)
    fit_check: bool = _opt(True, "skip the check of the RHM alone on up to 16 of the index's "
                           "clean real images (report rhm_fit; a warning below 50 dB; "
                           "docs/rhm_quality.md section 8)", ("--no-fit-check",),
                           action="store_false")

    def __post_init__(self):
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        for name in ("batch_size", "workers", "k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads!r}")
        if self.model_batch is not None and int(self.model_batch) < 1:
            raise ValueError(f"model_batch must be >= 1, got {self.model_batch!r}")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be 'exact' or 'prefilter', got {self.retrieval!r}")
        if self.candidates is not None and (self.retrieval != "prefilter"
                                            or int(self.candidates) < 1):
            raise ValueError("candidates needs retrieval='prefilter' and must be >= 1, "
                             f"got {self.candidates!r}")
        if self.rhm_stats not in RHM_STATS:
            raise ValueError(f"rhm_stats must be 'shr' or 'rhm', got {self.rhm_stats!r}")
        check_engine_settings(self.engine, self.precision)
        if self.files is not None and not isinstance(self.files, tuple):
            if isinstance(self.files, str):
                raise ValueError("files must be a list of paths, not one string")
            object.__setattr__(self, "files", tuple(self.files))

    def replace(self, **changes) -> "CalibrateConfig":
        return replace(self, **changes)


def make_config(config: CalibrateConfig | None = None, **settings) -> CalibrateConfig:
    """``config`` with ``settings`` applied (keyword API: ``calibrate_dir(..., k=20)``);
    an unknown setting is refused by name."""
    known = {f.name for f in fields(CalibrateConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown calibration setting(s) {unknown}; known: {sorted(known)}")
    return replace(config or CalibrateConfig(), **settings)


def add_cli_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One option per config field (``skip``: fields this command sets another way)."""
    for f in fields(CalibrateConfig):
        if f.name in skip:
            continue
        meta = f.metadata
        flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
        kw = dict(meta["cli"])
        if "action" not in kw:
            kw["default"] = f.default
        parser.add_argument(*flags, dest=f.name, help=meta["help"], **kw)


def config_from_cli(args: argparse.Namespace, **overrides) -> CalibrateConfig:
    """The config the parsed options describe (``overrides`` win)."""
    settings = {f.name: getattr(args, f.name) for f in fields(CalibrateConfig)
                if hasattr(args, f.name)}
    if settings.get("files") is not None:
        settings["files"] = read_file_list(settings["files"])
    settings.update(overrides)
    return make_config(**settings)


def read_file_list(path: str) -> tuple[str, ...]:
    """Paths from a text file, one per line (blank lines and '#' comments ignored)."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file list ({e.strerror})") from e
    return tuple(ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#"))
