"""Decoding and encoding of image files (the two ends of the pipeline).

Intensities map to float32 in [0, 1]: 8-bit / 255, 16-bit / 65535 (SPEC notation).
DICOM applies its rescale slope/intercept, then its own window (centre/width) when
the file has one, else the min-max of the pixel data. NIfTI volumes are split into
2-D slices along the last axis, each keyed ``file.nii.gz#z=0007``, scaled by the
min-max of the whole volume so that slices of one volume stay comparable.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .optional import optional_import

PIL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
SUPPORTED_EXTS = PIL_EXTS + DICOM_EXTS + NIFTI_EXTS
# Temp files of interrupted atomic writes end with this; a resumed run removes them.
TMP_SUFFIX = ".frerec-tmp"


class ImageReadError(ValueError):
    """A file could not be decoded; the message names the file and the problem."""


@dataclass
class Decoded:
    """One decoded 2-D image.

    pixels: [C, H, W] float32 in [0, 1], C in {1, 3}.
    """
    key: str
    pixels: np.ndarray
    fmt: str
    bit_depth: int
    meta: dict = field(default_factory=dict)


def _ext(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_supported(path: str | os.PathLike) -> bool:
    return _ext(Path(path)) in SUPPORTED_EXTS


def scan_images(root: str | os.PathLike) -> list[str]:
    """Supported image files under ``root``, recursively, as sorted POSIX relative paths.

    Hidden files and folders (names starting with '.') are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and is_supported(f):
                found.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(found)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _from_pil(path: Path, key: str) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            fmt = (im.format or _ext(path).lstrip(".")).upper()
            if mode in ("1", "L", "P", "LA", "PA", "RGBA", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(im.convert("L" if mode in ("1", "L", "LA") else "RGB"),
                                 dtype=np.float32) / 255.0
                if mode in ("P", "PA") and (arr[..., 0] == arr[..., 1]).all() \
                        and (arr[..., 1] == arr[..., 2]).all():
                    arr = arr[..., 0]  # a grey palette is a grayscale image
                depth = 8
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                raw = np.asarray(im)
                if raw.dtype != np.uint16 and (raw.min() < 0 or raw.max() > 65535):
                    raise ImageReadError(f"{path}: 32-bit integer image with values outside "
                                         f"0..65535 is not supported")
                arr = raw.astype(np.float32) / 65535.0
                depth = 16
            elif mode == "F":
                # np.array copies: asarray would be a read-only view of Pillow's buffer,
                # which torch.from_numpy warns about (and must not be written through).
                arr = np.array(im, dtype=np.float32)
                if arr.min() < 0 or arr.max() > 1:
                    raise ImageReadError(f"{path}: float image with values outside [0, 1]")
                depth = 32
            else:
                raise ImageReadError(f"{path}: unsupported image mode {mode!r}")
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    except OSError as e:
        raise ImageReadError(f"{path}: cannot decode ({e})") from e
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return Decoded(key, arr, fmt, depth, {"mode": mode})


def _from_dicom(path: Path, key: str) -> Decoded:
    pydicom = optional_import("pydicom", "reading DICOM files")
    try:
        ds = pydicom.dcmread(str(path))
        raw = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken files
        raise ImageReadError(f"{path}: cannot decode DICOM ({e})") from e
    if raw.ndim != 2:
        raise ImageReadError(f"{path}: DICOM pixel data of shape {raw.shape} is not one "
                             f"2-D grayscale frame (multi-frame and colour DICOM are not supported)")
    px = raw.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) \
        + float(getattr(ds, "RescaleIntercept", 0) or 0)
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None:
        c = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        lo, hi = c - w / 2.0, c + w / 2.0
    else:
        lo, hi = float(px.min()), float(px.max())
    arr = np.clip((px - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    bits = int(getattr(ds, "BitsStored", 16))
    return Decoded(key, arr[None], "DICOM", bits, {"window": (lo, hi)})


def _from_nifti(path: Path, rel: str) -> Iterator[Decoded]:
    nib = optional_import("nibabel", "reading NIfTI files")
    try:
        vol = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as e:
        raise ImageReadError(f"{path}: cannot decode NIfTI ({e})") from e
    vol = np.squeeze(vol)
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3:
        raise ImageReadError(f"{path}: NIfTI of shape {vol.shape} is not 2-D or 3-D")
    lo, hi = float(vol.min()), float(vol.max())
    scaled = np.clip((vol - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
    for z in range(scaled.shape[2]):
        yield Decoded(f"{rel}#z={z:04d}", np.ascontiguousarray(scaled[:, :, z])[None],
                      "NIFTI", 32, {"slice": z, "range": (lo, hi)})


def read_images(root: str | os.PathLike, rel: str) -> list[Decoded]:
    """Decode one file into its 2-D images (one, or one per NIfTI slice).

    Raises ImageReadError naming the file on any problem.
    """
    path = Path(root) / rel
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    ext = _ext(path)
    if ext in PIL_EXTS:
        out = [_from_pil(path, rel)]
    elif ext in DICOM_EXTS:
        out = [_from_dicom(path, rel)]
    elif ext in NIFTI_EXTS:
        out = list(_from_nifti(path, rel))
    else:
        raise ImageReadError(f"{path}: unsupported file type {ext!r} "
                             f"(supported: {', '.join(SUPPORTED_EXTS)})")
    for d in out:
        if d.pixels.shape[0] not in (1, 3):
            raise ImageReadError(f"{path}: {d.pixels.shape[0]} channels (expected 1 or 3)")
        if not np.isfinite(d.pixels).all():
            raise ImageReadError(f"{path}: contains NaN or infinite values")
    return out


def read_image(path: str | os.PathLike) -> Decoded:
    """Decode a single 2-D image file (PNG, JPEG, TIFF, BMP or DICOM)."""
    path = Path(path)
    items = read_images(path.parent, path.name)
    if len(items) != 1:
        raise ImageReadError(f"{path}: holds {len(items)} images; use read_images")
    return items[0]


def to_uint(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """[C, H, W] float in [0, 1] -> [H, W] or [H, W, C] uint8/uint16, rounded half up."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    q = np.floor(np.clip(pixels, 0.0, 1.0) * top + 0.5).astype(np.uint8 if bit_depth == 8 else np.uint16)
    return q[0] if q.shape[0] == 1 else np.ascontiguousarray(q.transpose(1, 2, 0))


def write_png(path: str | os.PathLike, pixels: np.ndarray, bit_depth: int = 8) -> None:
    """Write [C, H, W] float in [0, 1] as an 8- or 16-bit PNG (16-bit: grayscale only)."""
    from PIL import Image

    arr = to_uint(pixels, bit_depth)
    if bit_depth == 16 and arr.ndim == 3:
        raise ValueError("16-bit RGB PNG is not supported by Pillow; use grayscale or 8-bit")
    Image.fromarray(arr).save(path, format="PNG")


def _atomic_save(out: Path, save) -> None:
    """Write through ``save(fileobj)`` to a temp file beside ``out``, fsync, rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_like(src: Decoded, pixels: np.ndarray, out: str | os.PathLike,
               src_path: str | os.PathLike | None = None) -> None:
    """Encode ``pixels`` ([C, H, W] float in [0, 1]) in the source's format and bit depth,
    atomically (temp file, fsync, rename).

    PNG/TIFF/BMP keep 8 or 16 bits (sources with alpha or a palette are written as
    L or RGB); JPEG is written at quality 95 without chroma subsampling; float TIFF
    stays float32. DICOM keeps every header element and gets new pixel data mapped
    back through its window (values outside the window were clipped on reading) and
    written uncompressed. NIfTI volumes are written by ``write_nifti_like``.
    """
    out = Path(out)
    if src.fmt == "DICOM":
        _atomic_save(out, lambda fh: _dicom_like(src, pixels, src_path, fh))
        return
    from PIL import Image

    pil_fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(src.fmt, src.fmt)
    if src.bit_depth == 32:
        img = Image.fromarray(np.clip(pixels[0], 0, 1).astype(np.float32), mode="F")
    else:
        img = Image.fromarray(to_uint(pixels, 16 if src.bit_depth == 16 else 8))
    kwargs = {"quality": 95, "subsampling": 0} if pil_fmt == "JPEG" else {}
    _atomic_save(out, lambda fh: img.save(fh, format=pil_fmt, **kwargs))


def _dicom_like(src: Decoded, pixels: np.ndarray, src_path, fh) -> None:
    pydicom = optional_import("pydicom", "writing DICOM files")
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(str(src_path))
    raw = ds.pixel_array
    lo, hi = src.meta["window"]
    value = lo + np.clip(pixels[0].astype(np.float64), 0, 1) * (hi - lo)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    stored = np.rint((value - inter) / slope)
    info = np.iinfo(raw.dtype) if raw.dtype.kind in "iu" else None
    if info is not None:
        stored = np.clip(stored, info.min, info.max)
    ds.PixelData = stored.astype(raw.dtype).tobytes()
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(fh, enforce_file_format=True)


def atomic_write_bytes(dst: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temp file beside it, fsync, rename)."""
    _atomic_save(Path(dst), lambda fh: fh.write(data))


def atomic_write_text(dst: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dst, text.encode("utf-8"))


def write_nifti_like(src_path: str | os.PathLike, items: list[Decoded], slices: list[np.ndarray],
                     out: str | os.PathLike) -> None:
    """Write calibrated slices ([1, H, W] each, in [0, 1]) back as a NIfTI volume with the
    source's affine and header, values mapped back through the volume's min-max, float32."""
    nib = optional_import("nibabel", "writing NIfTI files")
    src_img = nib.load(str(src_path))
    lo, hi = items[0].meta["range"]
    vol = np.stack([s[0] for s in slices], axis=-1).astype(np.float64) * (hi - lo) + lo
    shape = src_img.shape
    vol = vol.reshape(shape) if int(np.prod(shape)) == vol.size else vol
    header = src_img.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(vol.astype(np.float32), src_img.affine, header)
    out = Path(out)
    data = img.to_bytes()
    atomic_write_bytes(out, _gzip(data) if out.name.endswith(".gz") else data)


def _gzip(data: bytes) -> bytes:
    import gzip

    # mtime=0 so that the same volume always compresses to the same bytes.
    return gzip.compress(data, mtime=0)
