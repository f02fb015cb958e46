"""Decoding and encoding of image files (the two ends of the pipeline).

Intensities map to float32 in [0, 1] by a fixed rule per stored type, and the writer
applies the inverse, so an image passed through unchanged is written back with the same
stored values (for DICOM see below):

- 8-bit (PNG, JPEG, TIFF, BMP): v / 255.
- 16-bit unsigned (grey PNG, TIFF): v / 65535.
- 16-bit signed TIFF: (v + 32768) / 65535, written back as int16.
- 32-bit signed TIFF: v / 65535, only for values in 0..65535 (others are refused),
  written back as int32.
- 32-bit float TIFF: as is, only for values in [0, 1]; written back as float32.
- Refused with ImageReadError: 16-bit colour (RGB/RGBA/grey+alpha) PNG and TIFF (Pillow
  decodes them to 8 bits and cannot write them; a 16-bit colour PNG is recognised from
  its IHDR, not from Pillow's mode), unsigned 32-bit and signed 8-bit TIFF (Pillow cannot
  write them back), float TIFF other than 32-bit, and multi-frame files (multi-page TIFF,
  animated PNG/GIF). An MPO file (a phone JPEG with an embedded preview) is its first
  frame and is written back as a plain JPEG.
- Converted, not refused: the alpha channel of LA/RGBA/PA images is dropped (not
  composited onto a background); palette images become RGB (or L when the palette is
  grey); 1-, 2- and 4-bit images become 8-bit L; CMYK/YCbCr/LAB/HSV become RGB. The
  output is written in the converted mode.
- Metadata: EXIF (with its Orientation tag), ICC profile and DPI of PNG and JPEG sources
  are written into the output; the pixels are processed as stored, so an image rotated
  by its EXIF Orientation displays the same way. An ICC profile whose colour space does
  not match the output (e.g. CMYK source written as RGB) is dropped. TIFF: Pillow applies
  the Orientation tag on reading, so the output is stored upright without the tag; the
  ICC profile, resolution (X/Y resolution and unit) and the descriptive tags (image
  description, make, model, software, date/time, artist, copyright) are carried; the
  EXIF sub-IFD is not. The output is written uncompressed (TIFF) or at JPEG quality 95
  without chroma subsampling.

DICOM applies its rescale slope/intercept, then its own window (centre/width) when
the file has one, else the min-max of the pixel data; values outside the window read
as 0 or 1. On writing, pixels whose stored value lay outside the window keep their
original stored value (the pipeline only saw them clipped); the others are mapped back
through the window and the inverse rescale to the stored type, clipped to its range and
to BitsStored. Every header element is kept; compressed pixel data is written
uncompressed (Explicit VR Little Endian).

NIfTI volumes are split into 2-D slices along the last axis, each keyed
``file.nii.gz#z=0007``, scaled by the min-max of the whole volume so that slices of one
volume stay comparable; they are written back as one float32 volume with the source's
affine and header, values mapped back through that min-max.

Every decoding problem of a file (including images over Pillow's decompression-bomb
limit of about 179 Mpx) raises ImageReadError naming the file and the reason; a
missing optional reader (pydicom, nibabel) raises ImportError with the install hint.
Files are untrusted: what a header claims is checked before memory is spent on it (a
NIfTI volume against MAX_VOXELS and the bytes the file really holds, a DICOM frame
against the pixel limit, a deflated DICOM inflated within it), and anything but a
regular file (a FIFO, a device) is refused rather than read.
Outputs are written atomically: temp file beside the target, fsync, rename, then an
fsync of the directory (best effort) so that the rename itself is durable.
"""
from __future__ import annotations

import hashlib
import os
import stat
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
# Pillow format names -> the format an output is written in (MPO: the first frame of a
# phone JPEG, written as a plain JPEG).
_OUT_FORMAT = {"JPG": "JPEG", "TIF": "TIFF", "MPO": "JPEG"}
# TIFF tags carried from source to output besides the ICC profile: resolution and the
# descriptive tags. Orientation is not among them: Pillow applies it on reading.
_TIFF_KEEP = (270, 271, 272, 282, 283, 296, 305, 306, 315, 33432)
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class ImageReadError(ValueError):
    """A file could not be decoded; the message names the file and the problem."""


@dataclass
class Decoded:
    """One decoded 2-D image.

    pixels: [C, H, W] float32 in [0, 1], C in {1, 3}.
    meta: what the writer needs to encode like the source: for Pillow formats "mode"
    (Pillow's mode of the source), "dtype" (stored sample type: uint8, uint16, int16,
    int32, float32) and, when present, "exif", "icc_profile", "dpi", "tiff_tags";
    DICOM "window" (lo, hi); NIfTI "slice" and "range" (lo, hi).
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


def scan_tree(root: str | os.PathLike,
              follow_symlinks: bool = False) -> tuple[list[str], dict[str, str]]:
    """Like ``scan_images``, with a policy for symbolic links (an untrusted input tree).

    Without ``follow_symlinks`` a link (to a file or a folder) whose target lies outside
    ``root`` is not read, nor is a broken or looping one; a link to a folder inside
    ``root`` is not entered (its images are found under their own path). With it, links
    are followed, folder loops cut. Either way a folder that cannot be listed
    (permissions) and a name that is not a regular file (a FIFO, socket or device node,
    which would block or never end when read) are left out and reported. Hidden files
    and folders (names starting with '.', such as ``.DS_Store`` and macOS ``._name``
    AppleDouble files) and files of unsupported types (``Thumbs.db``) are not images of
    the tree: skipped silently, as by ``scan_images``. Returns (sorted relative paths,
    {relative path: why it was left out}).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    found, excluded, seen = [], {}, set()

    def unlisted(e: OSError) -> None:
        where = Path(e.filename) if e.filename else root
        if where == root:
            raise OSError(e.errno, f"{root}: cannot list the input directory ({e.strerror})")
        excluded[where.relative_to(root).as_posix()] = (
            f"{where}: cannot list this folder ({e.strerror}): its files were not read")

    # Folders reachable without links are taken under their own path, whatever order
    # the walk meets a link to them in.
    plain = {Path(dp).resolve() for dp, _, _ in os.walk(root)} if follow_symlinks else set()
    ask = "pass follow_symlinks=True (CLI: --follow-symlinks) to read it"

    def why_not(p: Path, kind: str) -> str | None:
        try:
            target = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return f"{p}: broken or looping symbolic link: skipped"
        if target != root and root not in target.parents:
            return f"{p}: symbolic link to {target}, outside the input directory: skipped ({ask})"
        if kind == "folder":
            return (f"{p}: symbolic link to a folder inside the input directory: not entered "
                    "(its images are taken under their own path)")
        return None

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted,
                                                followlinks=follow_symlinks):
        d = Path(dirpath)
        if follow_symlinks:
            real = d.resolve()
            if real in seen:  # a folder loop, or a second way into one folder
                excluded[d.relative_to(root).as_posix()] = f"{d}: folder already scanned " \
                    f"as {real} (a symbolic link loop or a second link to it): skipped"
                dirnames[:] = []
                continue
            seen.add(real)
        keep = []
        for name in sorted(dirnames):
            p = d / name
            if name.startswith("."):
                continue
            if p.is_symlink() and (not follow_symlinks or p.resolve() in plain):
                excluded[p.relative_to(root).as_posix()] = why_not(p, "folder")
                continue
            keep.append(name)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith(".") or not is_supported(f):
                continue
            p = d / f
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() and not follow_symlinks:
                why = why_not(p, "file")
                if why is not None:
                    excluded[rel] = why
                    continue
            try:
                regular = stat.S_ISREG(p.stat().st_mode)
            except OSError:  # gone, or a broken link followed: the read reports it
                regular = True
            if not regular:
                excluded[rel] = f"{p}: not a regular file (a FIFO, socket or device): skipped"
                continue
            found.append(rel)
    return sorted(found), dict(sorted(excluded.items()))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a regular file. Anything else (a FIFO, whose open and read would
    block, or a device such as /dev/zero, which never ends) raises ImageReadError; the
    check is on the opened descriptor, so a file swapped after a scan cannot slip by."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageReadError(f"{path}: not a regular file (a FIFO, socket or device)")
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _first(v, default=None):
    if v is None:
        return default
    return v[0] if isinstance(v, tuple) else v


def _tiff_dtype(path: Path, im) -> str:
    """The stored sample type of a TIFF, or ImageReadError for types that cannot be
    decoded at full precision or written back."""
    tags = im.tag_v2
    bits = tags.get(258, (1,))
    bits = tuple(bits) if isinstance(bits, tuple) else (bits,)
    samples = int(_first(tags.get(277), 1))
    kind = {1: "uint", 2: "int", 3: "float"}.get(int(_first(tags.get(339), 1)))
    if samples > 1 and max(bits) > 8:
        raise ImageReadError(f"{path}: 16-bit colour PNG/TIFF is not supported: this TIFF has "
                             f"{samples} samples of {max(bits)} bits (Pillow would reduce them to "
                             f"8 bits); convert it to 16-bit grayscale or 8-bit colour")
    if kind is None:
        raise ImageReadError(f"{path}: TIFF sample format {tags.get(339)} is not supported")
    b = max(bits)
    if b < 8 and kind == "uint":
        return "uint8"  # 1/2/4-bit: read and written as 8-bit L
    dtype = f"{kind}{b}"
    if dtype not in ("uint8", "uint16", "int16", "int32", "float32"):
        raise ImageReadError(f"{path}: {dtype} TIFF is not supported (it cannot be written back "
                             f"in its own type; supported: uint8, uint16, int16, int32, float32)")
    return dtype


def _png_ihdr(fh) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None if ``fh`` is not a PNG."""
    head = fh.read(26)
    fh.seek(0)
    if len(head) < 26 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _from_pil(path: Path, key: str) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    try:
        # From an open file, not a path: Pillow memory-maps uncompressed files opened by
        # name, and its mapped path decodes a TIFF with Orientation 5-8 wrongly (Pillow 13).
        with open(path, "rb") as fh:
            ihdr = _png_ihdr(fh)
            with Image.open(fh) as im:
                fmt = (im.format or _ext(path).lstrip(".")).upper()
                frames = getattr(im, "n_frames", 1)
                if frames > 1 and fmt != "MPO":
                    raise ImageReadError(f"{path}: {frames} frames; multi-frame images are not "
                                         f"supported")
                if fmt == "PNG" and ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6):
                    what = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}[ihdr[1]]
                    raise ImageReadError(f"{path}: 16-bit colour PNG/TIFF is not supported: "
                                         f"this is a 16-bit {what} PNG (Pillow would reduce it "
                                         f"to 8 bits); convert it to 16-bit grayscale or 8-bit "
                                         f"colour")
                dtype = _tiff_dtype(path, im) if fmt == "TIFF" else None
                im.load()
                arr, depth, dtype, out_mode = _pil_pixels(path, im, dtype)
                meta = _pil_meta(im, fmt, out_mode)
                meta.update(mode=im.mode, dtype=dtype)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e
    except Exception as e:  # OSError, SyntaxError, ValueError, MemoryError, ... from decoders
        raise ImageReadError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return Decoded(key, arr, _OUT_FORMAT.get(fmt, fmt), depth, meta)


def _pil_pixels(path: Path, im, dtype: str | None):
    """(array [H, W] or [H, W, 3] float32 in [0, 1], bit depth, stored dtype, output mode)."""
    mode = im.mode
    if mode in ("1", "L", "P", "LA", "PA", "RGBA", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        out_mode = "L" if mode in ("1", "L", "LA") else "RGB"
        arr = np.asarray(im.convert(out_mode), dtype=np.float32) / 255.0
        if mode in ("P", "PA") and (arr[..., 0] == arr[..., 1]).all() \
                and (arr[..., 1] == arr[..., 2]).all():
            arr, out_mode = arr[..., 0], "L"  # a grey palette is a grayscale image
        return arr, 8, "uint8", out_mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(im)
        if dtype == "int16":
            return (raw.astype(np.float32) + 32768.0) / 65535.0, 16, dtype, "L"
        if raw.dtype != np.uint16 and (raw.min() < 0 or raw.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer image with values outside "
                                 f"0..65535 is not supported")
        dtype = dtype if dtype in ("uint16", "int32") else "uint16"
        return raw.astype(np.float32) / 65535.0, 16, dtype, "L"
    if mode == "F":
        # np.array copies: asarray would be a read-only view of Pillow's buffer,
        # which torch.from_numpy warns about (and must not be written through).
        arr = np.array(im, dtype=np.float32)
        if arr.min() < 0 or arr.max() > 1:
            raise ImageReadError(f"{path}: float image with values outside [0, 1]")
        return arr, 32, "float32", "L"
    raise ImageReadError(f"{path}: unsupported image mode {mode!r}")


def _icc_matches(icc: bytes, out_mode: str) -> bool:
    """Whether an ICC profile's data colour space (header bytes 16-19) fits the output."""
    space = bytes(icc[16:20]) if len(icc) >= 20 else b""
    return space == (b"GRAY" if out_mode == "L" else b"RGB ")


def _pil_meta(im, fmt: str, out_mode: str) -> dict:
    """Metadata of a Pillow source to write into the output (see the module docstring)."""
    meta: dict = {}
    icc = im.info.get("icc_profile")
    if icc and _icc_matches(icc, out_mode):
        meta["icc_profile"] = bytes(icc)
    if fmt == "TIFF":
        tags = {k: (im.tag_v2[k], im.tag_v2.tagtype.get(k)) for k in _TIFF_KEEP if k in im.tag_v2}
        if tags:
            meta["tiff_tags"] = tags
        return meta
    exif = im.info.get("exif")
    if not exif:
        # EXIF kept elsewhere: a PNG "Raw profile type exif" text chunk, or only an XMP
        # Orientation; Pillow's getexif() reads both.
        found = im.getexif()
        exif = found.tobytes() if len(found) else None
    if exif:
        meta["exif"] = bytes(exif)
    if im.info.get("dpi"):
        meta["dpi"] = tuple(float(v) for v in im.info["dpi"])
    return meta


def _max_pixels() -> int:
    """Pillow's decompression-bomb limit (about 179 Mpx), applied to every format."""
    from PIL import Image
    return int(Image.MAX_IMAGE_PIXELS or 1 << 62)


def _inflated_size(data: bytes, limit: int) -> int:
    """Size of a raw-deflate stream once inflated, counted in bounded chunks and
    stopping past ``limit`` (a deflate bomb is never held in memory)."""
    import zlib
    d, n, buf = zlib.decompressobj(-zlib.MAX_WBITS), 0, data
    while buf and n <= limit:
        n += len(d.decompress(buf, 1 << 20))
        buf = d.unconsumed_tail
    return n


def _dicom_precheck(pydicom, path: Path) -> None:
    """Refuse, before any pixel is decoded, what would make pydicom allocate far more
    than the file holds: a deflated dataset that inflates past the pixel limit, more
    than one frame, more than one sample per pixel, or Rows x Columns over the limit."""
    limit = _max_pixels()
    meta = pydicom.filereader.read_file_meta_info(str(path))
    if str(getattr(meta, "TransferSyntaxUID", "")) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        # The deflated dataset follows the preamble, "DICM" and the meta group (its
        # length element is 12 bytes, then the value it gives).
        start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
        if _inflated_size(path.read_bytes()[start:], 4 * limit) > 4 * limit:
            raise ImageReadError(f"{path}: deflated DICOM inflates past {4 * limit} bytes: too "
                                 "large to decode safely")
    head = pydicom.dcmread(str(path), stop_before_pixels=True)
    frames = int(getattr(head, "NumberOfFrames", 1) or 1)
    samples = int(getattr(head, "SamplesPerPixel", 1) or 1)
    rows, cols = int(getattr(head, "Rows", 0) or 0), int(getattr(head, "Columns", 0) or 0)
    if frames != 1 or samples != 1:
        raise ImageReadError(f"{path}: DICOM with {frames} frame(s) of {samples} sample(s) per "
                             "pixel is not one 2-D grayscale frame (multi-frame and colour "
                             "DICOM are not supported)")
    if rows * cols > limit:
        raise ImageReadError(f"{path}: DICOM of {rows}x{cols} pixels: image too large to decode "
                             f"safely (over {limit} pixels)")


def _from_dicom(path: Path, key: str) -> Decoded:
    pydicom = optional_import("pydicom", "reading DICOM files")
    try:
        _dicom_precheck(pydicom, path)
        ds = pydicom.dcmread(str(path))
        raw = ds.pixel_array
    except ImageReadError:
        raise
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


# Voxels of one NIfTI volume (2**30: 4 GiB as float32), checked from its header before
# any data is read.
MAX_VOXELS = 1 << 30


def _nifti_volume(nib, path: Path) -> np.ndarray:
    """The volume as float32, after checking the header's claim against the limit and
    against the bytes the file really holds: nibabel allocates the claimed size before
    reading, so a 1 kB header claiming 3 GB would otherwise take 3 GB (and a gzip bomb
    all it inflates to)."""
    img = nib.load(str(path))  # the header only; the data stay on disk
    n = int(np.prod(img.shape, dtype=np.int64)) if len(img.shape) else 1
    if n > MAX_VOXELS:
        raise ImageReadError(f"{path}: NIfTI of shape {img.shape} ({n} voxels) is too large to "
                             f"decode safely (over {MAX_VOXELS})")
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    need = offset + n * img.get_data_dtype().itemsize
    if path.name.lower().endswith(".gz"):
        import gzip
        chunks, got = [], 0
        with gzip.open(path, "rb") as fh:  # in chunks, never past what the header needs
            while got < need and (chunk := fh.read(min(1 << 24, need - got))):
                chunks.append(chunk)
                got += len(chunk)
        data = b"".join(chunks)
        if len(data) < need:
            raise ImageReadError(f"{path}: NIfTI data cut short: the header needs {need} bytes, "
                                 f"the file inflates to {len(data)}")
        img = type(img).from_bytes(data)
    elif path.stat().st_size < need:
        raise ImageReadError(f"{path}: NIfTI data cut short: the header needs {need} bytes, "
                             f"the file holds {path.stat().st_size}")
    return np.asarray(img.get_fdata(dtype=np.float32))


def _from_nifti(path: Path, rel: str) -> Iterator[Decoded]:
    nib = optional_import("nibabel", "reading NIfTI files")
    try:
        vol = _nifti_volume(nib, path)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"{path}: cannot decode NIfTI ({e})") from e
    vol = np.squeeze(vol)
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3:
        raise ImageReadError(f"{path}: NIfTI of shape {vol.shape} is not 2-D or 3-D")
    if vol.size == 0:
        raise ImageReadError(f"{path}: NIfTI volume of shape {vol.shape} is empty (no pixels)")
    lo, hi = float(vol.min()), float(vol.max())
    scaled = np.clip((vol - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
    for z in range(scaled.shape[2]):
        yield Decoded(f"{rel}#z={z:04d}", np.ascontiguousarray(scaled[:, :, z])[None],
                      "NIFTI", 32, {"slice": z, "range": (lo, hi)})


def read_images(root: str | os.PathLike, rel: str) -> list[Decoded]:
    """Decode one file into its 2-D images (one, or one per NIfTI slice).

    Raises ImageReadError naming the file on any problem (ImportError when the optional
    reader of its format is not installed).
    """
    path = Path(root) / rel
    if not path.is_file():
        raise ImageReadError(f"{path}: " + ("not a regular file (a folder, FIFO, socket or "
                                            "device)" if path.exists() else "no such file"))
    ext = _ext(path)
    try:
        if ext in PIL_EXTS:
            out = [_from_pil(path, rel)]
        elif ext in DICOM_EXTS:
            out = [_from_dicom(path, rel)]
        elif ext in NIFTI_EXTS:
            out = list(_from_nifti(path, rel))
        else:
            raise ImageReadError(f"{path}: unsupported file type {ext!r} "
                                 f"(supported: {', '.join(SUPPORTED_EXTS)})")
    except (ImageReadError, ImportError):
        raise
    except Exception as e:  # any other decoder failure still names the file
        raise ImageReadError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
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


def _fsync_dir(d: Path) -> None:
    """fsync a directory so that a rename in it is durable; best effort (some
    filesystems and platforms refuse to open or fsync a directory)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_prefix(name: str) -> str:
    """The prefix of ``name``'s temp file: '.' + the name, cut (in bytes) so that the
    temp name, with mkstemp's 8 random characters and TMP_SUFFIX, stays within the
    255-byte limit of a file name (a 255-byte output name must still be writable)."""
    room = 255 - 2 - 8 - len(TMP_SUFFIX)
    return "." + os.fsdecode(os.fsencode(name)[:room]) + "."


def _atomic_save(out: Path, save) -> None:
    """Write through ``save(fileobj)`` to a temp file beside ``out`` (so the rename never
    crosses filesystems), fsync, rename, fsync the directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(out.name), suffix=TMP_SUFFIX, dir=out.parent)
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
    _fsync_dir(out.parent)


def write_like(src: Decoded, pixels: np.ndarray, out: str | os.PathLike,
               src_path: str | os.PathLike | None = None) -> None:
    """Encode ``pixels`` ([C, H, W] float in [0, 1]) in the source's format and stored
    type, atomically (temp file, fsync, rename, fsync of the directory).

    PNG/TIFF/BMP keep their stored type (sources with alpha or a palette are written as
    L or RGB); JPEG (and MPO) is written as JPEG at quality 95 without chroma
    subsampling; EXIF, ICC profile and DPI are carried over (see the module docstring).
    DICOM keeps every header element and gets new pixel data mapped back through its
    window; stored values that were outside the window are kept (``src_path`` is the
    source file). NIfTI volumes are written by ``write_nifti_like``.
    """
    out = Path(out)
    if src.fmt == "DICOM":
        _atomic_save(out, lambda fh: _dicom_like(src, pixels, src_path, fh))
        return
    from PIL import Image, TiffImagePlugin

    pil_fmt = _OUT_FORMAT.get(src.fmt, src.fmt)
    dtype = src.meta.get("dtype") or {32: "float32", 16: "uint16"}.get(src.bit_depth, "uint8")
    kwargs: dict = {}
    tiff_tags = dict(src.meta.get("tiff_tags", {}))
    if dtype == "float32":
        img = Image.fromarray(np.clip(pixels[0], 0, 1).astype(np.float32))
    elif dtype == "int16":
        if pil_fmt != "TIFF":
            raise ValueError(f"int16 samples can only be written as TIFF, not {pil_fmt}")
        q = (to_uint(pixels[:1], 16).astype(np.int32) - 32768).astype("<i2")
        # Pillow has no signed 16-bit mode: write the bits as I;16, flagged signed.
        img = Image.frombytes("I;16", (q.shape[1], q.shape[0]), q.view("<u2").tobytes())
        tiff_tags[339] = (2, 3)  # SampleFormat = signed integer (SHORT)
    elif dtype == "int32":
        img = Image.fromarray(to_uint(pixels[:1], 16).astype(np.int32))
    else:
        img = Image.fromarray(to_uint(pixels, 16 if dtype == "uint16" else 8))
    if pil_fmt == "JPEG":
        kwargs.update(quality=95, subsampling=0)
    if pil_fmt in ("PNG", "JPEG", "TIFF") and src.meta.get("icc_profile"):
        kwargs["icc_profile"] = src.meta["icc_profile"]
    if pil_fmt in ("PNG", "JPEG") and src.meta.get("exif"):
        kwargs["exif"] = src.meta["exif"]
    if pil_fmt in ("PNG", "JPEG", "BMP") and src.meta.get("dpi"):
        kwargs["dpi"] = src.meta["dpi"]
    if pil_fmt == "TIFF" and tiff_tags:
        ifd = TiffImagePlugin.ImageFileDirectory_v2()
        for tag, (value, tagtype) in tiff_tags.items():
            ifd[tag] = value
            if tagtype is not None:
                ifd.tagtype[tag] = tagtype
        kwargs["tiffinfo"] = ifd
    _atomic_save(out, lambda fh: img.save(fh, format=pil_fmt, **kwargs))


def _dicom_like(src: Decoded, pixels: np.ndarray, src_path, fh) -> None:
    pydicom = optional_import("pydicom", "writing DICOM files")
    from pydicom.uid import ExplicitVRLittleEndian

    if src_path is None:
        raise ValueError("writing DICOM needs src_path, the source file (its header is copied)")
    ds = pydicom.dcmread(str(src_path))
    raw = ds.pixel_array
    if raw.shape != pixels.shape[1:]:
        raise ValueError(f"{src_path}: pixel data {raw.shape} does not match the image "
                         f"{pixels.shape[1:]} (was the source changed?)")
    lo, hi = src.meta["window"]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    value = lo + np.clip(pixels[0].astype(np.float64), 0, 1) * (hi - lo)
    stored = np.rint((value - inter) / slope)
    if raw.dtype.kind in "iu":
        info = np.iinfo(raw.dtype)
        bits = int(getattr(ds, "BitsStored", 0) or 0)
        smin, smax = info.min, info.max
        if 0 < bits < info.bits:
            smin, smax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if info.min < 0 \
                else (0, (1 << bits) - 1)
        stored = np.clip(stored, smin, smax)
    # Values outside the window were read as 0 or 1 (clipped): whatever the pipeline
    # made of them, it never saw their value, so they keep the one stored.
    orig = raw.astype(np.float64) * slope + inter
    stored = np.where((orig < lo) | (orig > hi), raw, stored)
    ds.PixelData = stored.astype(raw.dtype).tobytes()
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(fh, enforce_file_format=True)


def atomic_write_bytes(dst: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temp file beside it, fsync, rename, fsync of the directory)."""
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
