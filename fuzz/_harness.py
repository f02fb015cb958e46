"""Plumbing shared by the atheris harnesses: corpus folder and its seeds, instrumented
imports, one scratch folder per process, libFuzzer's flags passed through."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
# Instrumented for coverage feedback (FREREC_FUZZ_INSTRUMENT=a,b,c overrides): the
# project and the pure-Python parsers it hands untrusted bytes to.
DEFAULT_INSTRUMENT = ("frerec_fast", "PIL", "pydicom", "nibabel", "safetensors")


def corpus_dir(name: str) -> Path:
    """The first corpus folder in argv (libFuzzer's positional arguments), or
    ``fuzz/corpus/<name>`` added to argv when none is given."""
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not dirs:
        d = HERE / "corpus" / name
        sys.argv.append(str(d))
        return d
    return Path(dirs[0])


def write_seeds(d: Path, seeds: list[bytes]) -> None:
    """Fill an empty or missing corpus folder with the seeds (never overwrites one)."""
    d.mkdir(parents=True, exist_ok=True)
    if any(d.iterdir()):
        return
    for i, s in enumerate(seeds):
        (d / f"seed-{i:03d}").write_bytes(s)


def pair_seeds(seeds: dict[str, bytes], tensors_name: str) -> list[bytes]:
    """Seed inputs of a two-file target (``targets._pair_input``): each file of a valid
    artefact, with and without the checksum fix-up flag."""
    return [bytes([flag | (name == tensors_name)]) + blob
            for name, blob in seeds.items() for flag in (0, 2)]


def instrumented():
    """A context manager that instruments the modules imported inside it."""
    import atheris

    names = os.environ.get("FREREC_FUZZ_INSTRUMENT")
    include = [n for n in names.split(",") if n] if names is not None else list(DEFAULT_INSTRUMENT)
    return atheris.instrument_imports(include=include)


def fuzz(target: Callable[[bytes, Path], object]) -> None:
    """Run libFuzzer over ``target(data, scratch_folder)`` with the argv flags."""
    import atheris

    scratch = Path(tempfile.mkdtemp(prefix="frerec-fuzz-"))

    def one(data: bytes) -> None:
        target(data, scratch)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
