"""Fuzz targets shared by the atheris harnesses (``fuzz_*.py``) and the bounded CI tests
(``tests/test_hardening_readers.py``, ``tests/test_hardening_artefacts.py``,
``tests/test_fuzz_harnesses.py``).

Each target takes bytes and checks the contract for untrusted input:

- readers: ``frerec_fast.io.read_images`` returns valid images ([C, H, W] float32 in
  [0, 1], C in {1, 3}, finite) or raises ``ImageReadError`` whose message names the file;
- index: ``RealIndex.load`` returns a usable index or raises ``IndexFileError``;
- checkpoint: ``load_rhm`` returns an RHM or raises ``CheckpointError``.

Any other exception escapes (the fuzzer reports it as a crash). Seeds are made here from
the package's own code and a shipped image (``seed_*``), never downloaded. Run
``python fuzz/targets.py --mutate N`` for a seeded, non-coverage-guided pass (truncation,
bit flips, inserted junk) over every seed: what the CI test does.
"""
from __future__ import annotations

import argparse
import faulthandler
import gzip
import hashlib
import io
import json
import random
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

# Reader formats: the fuzz input's first byte picks one (low 4 bits) and a flag (0x10):
# PNG chunk CRCs recomputed, so that mutations reach the decoder instead of failing the
# CRC. "nii.gz" inputs are the uncompressed volume, gzipped by the target.
READER_FORMATS = (".png", ".png16", ".jpg", ".tif", ".bmp", ".dcm", ".nii", ".nii.gz")
FIX_CRC = 0x10
# A tiny RHM: every part, 196 kB of weights.
TINY_RHM = dict(dim=4, heads=(1, 1, 1, 1), blocks=(1, 1, 1, 1), refinement=0, n_rings=2,
                n_sectors=2, ffn_expansion=1.0)


def _shipped_image(size: int = 24) -> np.ndarray:
    """A crop of a shipped real CT slice as uint16 [size, size]."""
    from PIL import Image

    from frerec_fast.datasets import real_dir
    path = sorted(real_dir("train").rglob("*.png"))[0]
    with Image.open(path) as im:
        a = np.asarray(im).astype(np.uint32)
    a = a if a.max() > 255 else a * 257
    return a[20:20 + size, 20:20 + size].astype(np.uint16)


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def reader_formats() -> tuple[str, ...]:
    """The formats whose readers are installed here (pydicom, nibabel are extras)."""
    return tuple(f for f in READER_FORMATS
                 if (f != ".dcm" or _have("pydicom")) and (not f.startswith(".nii") or _have("nibabel")))


def _dicom_bytes(a: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["frerec-fuzz-seed"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (a >> 4).astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    """{format: bytes of a small valid file} for every installed reader format."""
    from PIL import Image

    a16 = _shipped_image()
    a8 = (a16 >> 8).astype(np.uint8)
    out: dict[str, bytes] = {}

    def pil(arr, fmt, **kw):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **kw)
        return buf.getvalue()

    out[".png"] = pil(a8, "PNG")
    out[".png16"] = pil(a16, "PNG")
    out[".jpg"] = pil(np.stack([a8, a8[::-1], a8[:, ::-1]], -1), "JPEG", quality=80)
    out[".tif"] = pil(a16, "TIFF")
    out[".bmp"] = pil(a8, "BMP")
    fmts = reader_formats()
    if ".dcm" in fmts:
        out[".dcm"] = _dicom_bytes(a16)
    if ".nii" in fmts:
        import nibabel as nib
        vol = np.stack([a16[:16, :16].astype(np.int16) - 2000 + 7 * z for z in range(3)], -1)
        nii = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
        out[".nii"] = nii
        out[".nii.gz"] = nii  # gzipped by the target
    return {f: out[f] for f in fmts}


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every whole chunk of a PNG (data after a cut is kept)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 12 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        end = i + 12 + n
        if end > len(data):
            break
        body = data[i + 4:i + 8 + n]
        out += data[i:i + 4] + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        i = end
    return bytes(out + data[i:])


def _check_images(items, path: Path) -> None:
    assert isinstance(items, list) and items, f"{path}: read_images returned {items!r}"
    for d in items:
        px = d.pixels
        assert isinstance(px, np.ndarray) and px.dtype == np.float32, (path, type(px), px.dtype)
        assert px.ndim == 3 and px.shape[0] in (1, 3) and min(px.shape[1:]) >= 1, (path, px.shape)
        assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0, path


def read_case(data: bytes, fmt: str, workdir: Path, fix_crc: bool = False) -> str:
    """Write ``data`` as a ``fmt`` file in ``workdir`` and read it. Returns "ok" or
    "error" (ImageReadError naming the file); any other outcome raises."""
    from frerec_fast import io as fio

    if fmt == ".png" or fmt == ".png16":
        data = fix_png_crcs(data) if fix_crc else data
    if fmt == ".nii.gz":
        data = gzip.compress(data, mtime=0)
    ext = ".png" if fmt == ".png16" else fmt
    path = workdir / f"case{ext}"
    path.write_bytes(data)
    try:
        items = fio.read_images(workdir, path.name)
    except fio.ImageReadError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        return "error"
    _check_images(items, path)
    return "ok"


def reader_input(data: bytes, workdir: Path) -> str | None:
    """The atheris reader target: byte 0 picks the format and flags, the rest is the file."""
    if not data:
        return None
    fmts = reader_formats()
    return read_case(data[1:], fmts[(data[0] & 0x0F) % len(fmts)], workdir,
                     fix_crc=bool(data[0] & FIX_CRC))


def reader_seeds() -> list[bytes]:
    """Seed inputs of the reader harness (format byte + file), CRC-fixing on and off."""
    fmts = reader_formats()
    seeds = []
    for fmt, blob in seed_files().items():
        i = fmts.index(fmt)
        seeds += [bytes([i]) + blob, bytes([i | FIX_CRC]) + blob]
    return seeds


# -- index and checkpoint --------------------------------------------------------------------
def seed_index(workdir: Path) -> Path:
    """A real index of 3 generated 16x16 PNGs (retrieval size 16), built and saved by
    ``frerec_fast.build_index``. Returns its folder."""
    from PIL import Image

    import frerec_fast as ff
    real = workdir / "real"
    real.mkdir(parents=True, exist_ok=True)
    a = _shipped_image(16)
    for i in range(3):
        Image.fromarray(np.roll(a, 3 * i, axis=i % 2)).save(real / f"r{i}.png")
    return ff.build_index(real, workdir / "index", retrieval_size=16, progress=False).path


def seed_checkpoint(workdir: Path) -> Path:
    """A tiny RHM saved by ``save_checkpoint``. Returns the stem."""
    import torch

    from frerec_fast.model import RHM, RHMConfig, save_checkpoint
    torch.manual_seed(0)
    return save_checkpoint(workdir / "rhm", RHM(RHMConfig(**TINY_RHM)).eval(),
                           extra={"note": "fuzz seed"})


def _fix_sha(meta: bytes, key: str, blob: bytes) -> bytes:
    """``meta`` (JSON) with ``key`` set to the SHA-256 of ``blob``, if it parses as an
    object; else unchanged. Lets mutations of the tensors get past the checksum."""
    try:
        m = json.loads(meta)
    except (ValueError, RecursionError):
        return meta
    if not isinstance(m, dict):
        return meta
    m[key] = hashlib.sha256(blob).hexdigest()
    return json.dumps(m).encode()


def index_case(files: dict[str, bytes], workdir: Path) -> str:
    """Write an index folder from {name: bytes} and load it. "ok" (then one retrieval
    must work) or "error" (IndexFileError); anything else raises."""
    import torch

    import frerec_fast as ff
    d = workdir / "idx"
    d.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    try:
        idx = ff.RealIndex.load(d)
    except ff.IndexFileError as e:
        assert str(d) in str(e), f"the error does not name the file: {e}"
        return "error"
    q = torch.rand(1, idx.config.channels, *idx.config.retrieval_size,
                   generator=torch.Generator().manual_seed(0))
    nb = idx.neighbours(q, k=2, backend="torch")
    assert nb.ids.shape[0] == 1 and torch.isfinite(nb.scores).all()
    return "ok"


def _pair_input(data: bytes, seeds: dict[str, bytes], names: tuple[str, str],
                sha_key: str) -> dict[str, bytes] | None:
    """The two files of an artefact (sidecar JSON, tensors) with one replaced by the fuzz
    input: byte 0 bit 0 picks which, bit 1 recomputes the tensors' checksum in the JSON
    (so the loader's checks behind the checksum are reached too)."""
    if not data:
        return None
    files = dict(seeds)
    files[names[data[0] & 1]] = data[1:]
    if data[0] & 2:
        files[names[0]] = _fix_sha(files[names[0]], sha_key, files[names[1]])
    return files


def index_input(data: bytes, seeds: dict[str, bytes], workdir: Path) -> str | None:
    """The atheris index target over index.json / index.safetensors (``_pair_input``)."""
    files = _pair_input(data, seeds, ("index.json", "index.safetensors"), "tensors_sha256")
    return None if files is None else index_case(files, workdir)


def checkpoint_case(files: dict[str, bytes], workdir: Path) -> str:
    """Write rhm.json / rhm.safetensors from {name: bytes} and load them: "ok" or
    "error" (CheckpointError); anything else raises."""
    from frerec_fast.model import CheckpointError, load_rhm
    for name, blob in files.items():
        (workdir / name).write_bytes(blob)
    try:
        load_rhm(workdir / "rhm")
    except CheckpointError as e:
        assert "rhm" in str(e), f"the error does not name the file: {e}"
        return "error"
    return "ok"


def checkpoint_input(data: bytes, seeds: dict[str, bytes], workdir: Path) -> str | None:
    """The atheris checkpoint target over rhm.json / rhm.safetensors (``_pair_input``)."""
    files = _pair_input(data, seeds, ("rhm.json", "rhm.safetensors"), "weights_sha256")
    return None if files is None else checkpoint_case(files, workdir)


def read_seed_dir(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


# -- seeded mutations (the CI pass; not coverage-guided) -----------------------------------
def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: a cut, bit flips, junk inserted, a run overwritten, a chunk
    duplicated, or a header field set to an extreme (0 or all ones)."""
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 or not b:
        return bytes(b[:rng.randrange(len(b) + 1)])
    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        i = rng.randrange(len(b))
        n = rng.randint(1, 32)
        b[i:i + n] = rng.randbytes(min(n, len(b) - i))
    elif kind == 4:
        i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
        b[j:j] = b[i:j][:4096]
    else:  # an extreme value in the first 512 bytes, where the headers are
        i = rng.randrange(min(len(b), 512))
        n = rng.choice((1, 2, 4))
        b[i:i + n] = rng.choice((b"\xff", b"\x00", b"\x7f")) * min(n, len(b) - i)
    return bytes(b)


def mutate_readers(n: int, seed: int, timeout: float) -> dict:
    """``n`` mutations of every reader seed; a case running past ``timeout`` seconds
    dumps its traceback and exits (faulthandler: works inside C decoders too)."""
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, blob in seed_files().items():
            c = counts.setdefault(fmt, {"ok": 0, "error": 0})
            for i in range(n):
                data = blob if i == 0 else mutate(blob, rng)
                faulthandler.dump_traceback_later(timeout, exit=True)
                try:
                    got = read_case(data, fmt, Path(tmp), fix_crc=bool(i % 2))
                except BaseException:
                    print(f"FAILED {fmt} case {i} (seed {seed}): input {data.hex()[:200]}...",
                          file=sys.stderr)
                    raise
                finally:
                    faulthandler.cancel_dump_traceback_later()
                c[got] += 1
            assert c["ok"] >= 1, f"{fmt}: the unmutated seed did not read"
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutate", type=int, default=100, help="cases per reader format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    a = ap.parse_args()
    print(json.dumps(mutate_readers(a.mutate, a.seed, a.timeout)))


if __name__ == "__main__":
    main()
