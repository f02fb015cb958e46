"""The run record: where a run may write, what it has done (the manifest), the resume
fingerprint, and the report it leaves behind."""
from __future__ import annotations

import enum
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Sequence

import torch

from .. import io as fio
from ..index import RealIndex, resample
from ..progress import bar as progress_bar
from ..spectral import frequency_gap, luma, spectral_profile

MANIFEST = "frerec_manifest.jsonl"
REPORT = "frerec_report.json"
GAP_SAMPLE = 256
# method §8 asks every reported gap to name its protocol. One run sees only its own outputs
# and the index, so its gap is always "against raw real"; the deployed protocol needs the
# real held-out images calibrated too, which ``frerec eval`` does.
GAP_PROTOCOL = ("against raw real: a sample of this run's inputs and outputs vs the index's "
                "real images (uncalibrated), luma at the retrieval size")


class Status(str, enum.Enum):
    """A file's outcome in the manifest (the string is what the manifest stores)."""
    OK = "ok"
    ERROR = "error"


# -- where a run may write ------------------------------------------------------------------
def check_dirs(src, dst) -> tuple[Path, Path]:
    """Resolved (src, dst); refuses a missing src, a dst equal to, inside or containing
    src (inputs are never modified), and a dst that cannot be written (``check_writable``),
    so that such a run fails before any work."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: input directory not found")
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"{dst}: the output directory must not contain, or be inside, "
                         f"the input directory {src} (inputs are never modified)")
    check_writable(dst)
    return src, dst


def check_writable(dst: Path) -> None:
    """Refuse an output directory that cannot be written: a path through a file, or a
    folder (``dst``, or the nearest existing folder above a ``dst`` still to be made)
    without write permission or on a read-only filesystem. A check of the permissions
    (``os.access``), nothing is created; a filesystem that says yes and refuses later
    still fails per file, or at the lock, with the path named."""
    probe = Path(dst)
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{dst}: cannot be the output directory: {probe} is not "
                                 "a folder")
    eff = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=eff):
        where = "it" if probe == dst else f"the folder {probe} it would be made in"
        raise PermissionError(f"{dst}: the output directory is not writable ({where} is "
                              "read-only or lacks write permission for this user); choose "
                              "another output directory or fix its permissions")


def manifest_paths(dst: Path) -> list[Path]:
    """The manifests in ``dst``: the local run's and those of distributed shards."""
    return sorted(Path(dst).glob("frerec_manifest*.jsonl"))


def prepare_dst(dst: Path, resume: bool) -> None:
    """Before a run: remove temp files of interrupted writes, and the manifests too when
    not resuming (so that every file is redone)."""
    for stale in dst.rglob(f"*{fio.TMP_SUFFIX}"):
        stale.unlink()
    if not resume:
        for m in manifest_paths(dst):
            m.unlink()


def checked_files(src: Path, files: Sequence[str], follow_symlinks: bool = False) -> list[str]:
    """Relative POSIX paths of ``files`` under ``src``, sorted; refuses paths outside it
    (and, unless ``follow_symlinks``, links that lead outside it)."""
    out = []
    for f in files:
        norm = Path(os.path.normpath(src / f))
        if src not in norm.parents:
            raise ValueError(f"{f}: not a file under the input directory {src}")
        if not follow_symlinks and src not in (src / f).resolve().parents:
            raise ValueError(f"{f}: leads outside the input directory {src} (a symbolic "
                             "link; pass follow_symlinks=True / --follow-symlinks to read it)")
        out.append(norm.relative_to(src).as_posix())
    return sorted(set(out))


class RunLocked(RuntimeError):
    """Another run is writing into the same output directory."""


class RunLock:
    """An exclusive lock on ``dst`` for one run: a second run into the same folder is
    refused with a message naming the first (pid, host, start time).

    ``flock`` on ``dst/.frerec.lock``: the kernel drops it when the holder exits, however
    it exits (SIGKILL included), so a killed run never leaves it stuck. It is advisory
    and local: it protects runs on one machine (or a filesystem whose flock is shared
    between its clients); where ``fcntl`` is missing (Windows) there is no lock.
    """
    NAME = ".frerec.lock"

    def __init__(self, dst: Path):
        self.path = Path(dst) / self.NAME
        self._fh = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not serialised
            return self
        try:
            fh = open(self.path, "a+")
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: cannot create the run's lock file "
                          f"({e.strerror}): is the output directory writable?") from e
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "holder unknown"
            fh.close()
            raise RunLocked(f"{self.path.parent}: another frerec run is writing into this "
                            f"output directory ({holder}); wait for it to finish, or choose "
                            "another output directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


# -- what is done ---------------------------------------------------------------------------
class Manifest:
    """Append-only JSON-lines record of finished files, fsynced after each line.

    Appends go to ``path``; what is done is read from every manifest in its folder
    (``frerec_manifest*.jsonl``), so a local run resumes a distributed one and vice
    versa. A line cut short by a kill is dropped on opening, so the file stays usable.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, list[dict]] = {}
        others = [p for p in manifest_paths(path.parent) if p != path]
        for p in others + ([path] if path.exists() else []):
            data = p.read_bytes()
            if p == path and data and not data.endswith(b"\n"):
                # A line torn by a crash: drop it, or the next append would be glued to
                # it and lost as well.
                data = data[:data.rfind(b"\n") + 1]
                with open(path, "r+b") as fh:
                    fh.truncate(len(data))
            for line in data.decode("utf-8", errors="replace").splitlines():
                try:
                    e = json.loads(line)
                    self.entries.setdefault(e["path"], []).append(e)
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue
        self._fh = open(path, "ab", buffering=0)  # unbuffered: nothing left to flush on error

    def done(self, rel: str, digest: str, dst: Path, run: str | None = None) -> bool:
        """True if ``rel`` was written with this input hash by a run of the same
        settings (``run``: fingerprint of seed, k, index, model, ...), and its output
        still exists."""
        return any(e.get("status") == Status.OK and e.get("input_sha256") == digest
                   and (run is None or e.get("run") == run)
                   and (dst / e.get("output", rel)).is_file()
                   for e in self.entries.get(rel, ()))

    def append(self, entry: dict) -> None:
        """Write one line and fsync it. A failed write (disk full, a file size limit)
        ends the run with a message saying that what is recorded is kept: a torn line
        is dropped when the manifest is next opened, and resume goes on from there."""
        self.entries.setdefault(entry["path"], []).append(entry)
        try:
            self._fh.write((json.dumps(entry) + "\n").encode())
            os.fsync(self._fh.fileno())
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: cannot append to the manifest "
                          f"({e.strerror}): the disk is full or a file size limit was "
                          "reached. Every file recorded before this one is kept; free "
                          "space and rerun the same command to resume") from e

    def close(self) -> None:
        self._fh.close()


class RunRecord:
    """One run's bookkeeping: manifest lines, counts, errors and the progress bar.

    Every file ends here exactly once, as ok, failed or skipped (already done).
    """

    def __init__(self, manifest: Manifest, src: Path, seed: int, run_id: str, total: int,
                 progress: bool):
        self.manifest, self.src, self.seed, self.run_id = manifest, src, seed, run_id
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        self.errors: dict[str, str] = {}
        self.bar = progress_bar(total, "calibrate", "img", progress)

    def ok(self, rel: str, digest: str, out_hash: str, tiles: int) -> None:
        self.manifest.append({"path": rel, "output": rel, "input_sha256": digest,
                              "output_sha256": out_hash, "status": Status.OK.value,
                              "seed": self.seed, "run": self.run_id, "tiles": tiles})
        self.counts["ok"] += 1
        self.bar.update(1)

    def failed(self, rel: str, digest: str | None, err: str) -> None:
        self.counts["failed"] += 1
        self.errors[rel] = err
        self.manifest.append({"path": rel, "input_sha256": digest, "status": Status.ERROR.value,
                              "error": err, "seed": self.seed, "run": self.run_id})
        self.bar.update(1)

    def skipped(self) -> None:
        self.counts["skipped"] += 1
        self.bar.update(1)

    def close(self, manifest: bool = True) -> None:
        """Close the progress bar, and the manifest unless ``manifest`` is False (its
        owner appends more runs to it)."""
        if manifest:
            self.manifest.close()
        self.bar.close()


# -- the resume fingerprint -----------------------------------------------------------------
def index_digest(index: RealIndex) -> str:
    """What identifies the index's data (``RealIndex.digest``): the tensor file's checksum
    from index.json for a saved single-file index, a hash of the shards' checksums for a
    sharded one, else a hash of its tensors and keys."""
    return index.digest()


def model_digest(net) -> str | None:
    """Hash of a model's config and weights (None: SHR only). A callable without a
    state_dict (an exported engine) is known by its type only."""
    if net is None:
        return None
    if not hasattr(net, "state_dict"):
        return f"{type(net).__module__}.{type(net).__qualname__}"
    state = sorted(net.state_dict(keep_vars=True).items())  # the tensors themselves: stable ids
    cfg = getattr(net, "config", None)
    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True) if hasattr(cfg, "to_dict") else ""
    # Hashing copies every weight to the host (120 MB for the paper-size RHM): cached on
    # the module while no tensor was replaced (id, storage pointer, dtype, device) or
    # changed in place (torch's per-tensor version counter, bumped by every such update).
    key = (cfg_json, tuple((name, id(t), t.data_ptr(), t.dtype, t.device, t._version)
                           for name, t in state))
    cached = getattr(net, "_frerec_digest", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(cfg_json.encode())
    for name, t in state:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    try:
        net._frerec_digest = (key, digest)
    except AttributeError:  # a module that refuses new attributes: hash every time
        pass
    return digest


def run_fingerprint(**settings) -> str:
    """Short hash of the settings that decide an output's bytes, stored with each
    manifest line so that resume never mixes outputs of different settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# -- the report's frequency gaps ------------------------------------------------------------
def sample_gaps(sample_in: list, sample_out: list, index: RealIndex) -> dict:
    """Frequency gaps (method §8) of input and output samples ([C, h, w] tiles) to the
    index's thumbnails, all at the retrieval size (area resampling)."""
    if not sample_in or not sample_out:
        return {}
    size = index.config.retrieval_size
    step = max(1, len(index) // 1024)
    ref = spectral_profile(index.thumbs_at(torch.arange(0, len(index), step)).float())

    def prof(xs):
        return spectral_profile(resample(luma(torch.stack(xs).float()), size))

    pi, po = prof(sample_in), prof(sample_out)
    out = gaps_from_profiles(pi, po, ref, index.config.ratio)
    # Mean log10 profiles are linear in the images: shards' reports merge exactly.
    out["profiles"] = {"inputs": pi.tolist(), "outputs": po.tolist(), "index": ref.tolist(),
                       "n_inputs": len(sample_in), "n_outputs": len(sample_out)}
    out["sample"] = min(len(sample_in), len(sample_out))
    return out


def gaps_from_profiles(pi: torch.Tensor, po: torch.Tensor, ref: torch.Tensor,
                       ratio: float) -> dict:
    """The report's gap block from mean profiles [R] of inputs, outputs and the index."""
    gi = frequency_gap(pi, ref, ratio)
    go = frequency_gap(po, ref, ratio)
    return {"protocol": GAP_PROTOCOL,
            "inputs_vs_index": {"high_band": gi[0], "all_radii": gi[1]},
            "outputs_vs_index": {"high_band": go[0], "all_radii": go[1]}}
