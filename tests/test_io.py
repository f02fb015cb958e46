"""Decoding real files on disk: PNG 8/16-bit, JPEG, TIFF, DICOM, NIfTI, and bad input."""
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from frerec_fast import io as fio


def test_png_8_and_16_bit(tmp_path):
    a8 = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    a16 = (np.arange(20 * 30) * 97 % 65536).astype(np.uint16).reshape(20, 30)
    Image.fromarray(a8).save(tmp_path / "a.png")
    Image.fromarray(a16).save(tmp_path / "b.png")
    d8, d16 = fio.read_image(tmp_path / "a.png"), fio.read_image(tmp_path / "b.png")
    assert d8.bit_depth == 8 and d16.bit_depth == 16
    np.testing.assert_array_equal(d8.pixels[0], a8 / np.float32(255))
    np.testing.assert_allclose(d16.pixels[0], a16 / 65535.0, rtol=1e-6)
    # Round trip through the encoder is exact at both depths.
    fio.write_png(tmp_path / "c.png", d16.pixels, 16)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), a16)
    fio.write_png(tmp_path / "d.png", d8.pixels, 8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d.png")), a8)


def test_rgb_jpeg_tiff(tmp_path):
    rgb = (np.random.default_rng(0).random((16, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "x.tif")
    j, t = fio.read_image(tmp_path / "x.jpg"), fio.read_image(tmp_path / "x.tif")
    assert j.pixels.shape == (3, 16, 12) and t.pixels.shape == (3, 16, 12)
    np.testing.assert_array_equal(t.pixels.transpose(1, 2, 0), rgb / np.float32(255))


def test_scan_is_sorted_recursive_and_skips_hidden(tmp_path):
    for rel in ["b/2.png", "a.png", "b/1.tif", ".hidden/x.png", "c/.y.png", "readme.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert fio.scan_images(tmp_path) == ["a.png", "b/1.tif", "b/2.png"]
    with pytest.raises(FileNotFoundError):
        fio.scan_images(tmp_path / "nope")


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(fio.ImageReadError, match="trunc.png"):
        fio.read_image(tmp_path / "trunc.png")
    with pytest.raises(fio.ImageReadError, match="no such file"):
        fio.read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4, 2), np.uint8)[..., 0]).convert("LA").save(tmp_path / "la.png")
    assert fio.read_image(tmp_path / "la.png").pixels.shape == (1, 4, 4)


def test_dicom_and_nifti(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds_path = get_testdata_file("CT_small.dcm")
    d = fio.read_image(ds_path)
    ds = pydicom.dcmread(ds_path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert d.pixels.shape == (1, *ds.pixel_array.shape) and d.fmt == "DICOM"
    assert 0.0 <= d.pixels.min() and d.pixels.max() <= 1.0
    # Ordering of intensities is preserved by the window / min-max mapping.
    assert np.corrcoef(hu.ravel(), d.pixels.ravel())[0, 1] > 0.9

    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    slices = fio.read_images(tmp_path, "v.nii.gz")
    assert [s.key for s in slices] == ["v.nii.gz#z=0000", "v.nii.gz#z=0001", "v.nii.gz#z=0002"]
    lo, hi = vol.min(), vol.max()
    np.testing.assert_allclose(slices[1].pixels[0], (vol[:, :, 1] - lo) / (hi - lo), rtol=1e-5)


# --- Hand-made files: bytes written here, independent of Pillow's encoders -------------

def _png_bytes(width, height, depth, ctype, rows):
    """A PNG with the given IHDR and filter-0 rows (each row: the raw scanline bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + r for r in rows), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def test_decompression_bomb_and_empty_nifti_are_read_errors(tmp_path):
    # 14000 x 14000 1-bit: 196 Mpx in about 24 kB, over Pillow's bomb limit (kept).
    row = bytes(14000 // 8)
    (tmp_path / "bomb.png").write_bytes(_png_bytes(14000, 14000, 1, 0, [row] * 14000))
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(fio.ImageReadError, match=r"bomb\.png.*too large"):
        fio.read_images(tmp_path, "bomb.png")

    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 0), np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(fio.ImageReadError, match=r"empty\.nii.*empty"):
        fio.read_images(tmp_path, "empty.nii")


def test_nifti_is_written_back_as_float32(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = (np.arange(6 * 5 * 2).reshape(6, 5, 2) * 3 - 7).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    items = fio.read_images(tmp_path, "v.nii.gz")
    fio.write_nifti_like(tmp_path / "v.nii.gz", items, [d.pixels for d in items],
                         tmp_path / "out.nii.gz")
    back = nib.load(tmp_path / "out.nii.gz")
    assert back.get_data_dtype() == np.float32
    np.testing.assert_allclose(back.get_fdata(), vol, atol=1e-3)


@pytest.mark.parametrize("ctype,what", [(2, "RGB"), (6, "RGBA"), (4, "grey\\+alpha")])
def test_16_bit_colour_png_is_refused(tmp_path, ctype, what):
    channels = {2: 3, 4: 2, 6: 4}[ctype]
    a = (np.arange(4 * 5 * channels).reshape(4, 5 * channels) * 1009 % 65536).astype(">u2")
    (tmp_path / "c16.png").write_bytes(_png_bytes(5, 4, 16, ctype, [r.tobytes() for r in a]))
    with pytest.raises(fio.ImageReadError,
                       match=rf"c16\.png: 16-bit colour PNG/TIFF is not supported: .*16-bit {what}"):
        fio.read_images(tmp_path, "c16.png")
    # 8-bit RGB and 16-bit grey PNGs made the same way still decode exactly.
    rgb8 = (np.arange(4 * 15).reshape(4, 15) * 7 % 256).astype(np.uint8)
    (tmp_path / "c8.png").write_bytes(_png_bytes(5, 4, 8, 2, [r.tobytes() for r in rgb8]))
    np.testing.assert_array_equal(fio.read_image(tmp_path / "c8.png").pixels,
                                  rgb8.reshape(4, 5, 3).transpose(2, 0, 1) / np.float32(255))
    g16 = (np.arange(20).reshape(4, 5) * 3001 % 65536).astype(">u2")
    (tmp_path / "g16.png").write_bytes(_png_bytes(5, 4, 16, 0, [r.tobytes() for r in g16]))
    np.testing.assert_allclose(fio.read_image(tmp_path / "g16.png").pixels[0],
                               g16.astype(np.float64) / 65535, rtol=1e-6)


def test_16_bit_colour_tiff_is_refused(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb16 = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1009).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    with pytest.raises(fio.ImageReadError, match=r"c16\.tif: 16-bit colour PNG/TIFF is not supported"):
        fio.read_images(tmp_path, "c16.tif")


def test_tiff_integer_types_round_trip_in_their_own_type(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(1)
    cases = {
        "i16": (rng.integers(-32768, 32768, (6, 7)).astype(np.int16), lambda v: (v + 32768.0) / 65535),
        "i32": (rng.integers(0, 65536, (6, 7)).astype(np.int32), lambda v: v / 65535.0),
        "u16": (rng.integers(0, 65536, (6, 7)).astype(np.uint16), lambda v: v / 65535.0),
    }
    cases["i16"][0][0, :2] = (-32768, 32767)
    for name, (a, mapping) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", a)
        d = fio.read_image(tmp_path / f"{name}.tif")
        assert d.meta["dtype"] == str(a.dtype)
        np.testing.assert_allclose(d.pixels[0], mapping(a.astype(np.float64)), rtol=0, atol=1e-7)
        fio.write_like(d, d.pixels, tmp_path / f"{name}_out.tif")
        back = tifffile.imread(tmp_path / f"{name}_out.tif")
        assert back.dtype == a.dtype
        np.testing.assert_array_equal(back, a)
    # Types that cannot be written back are refused, naming the type.
    tifffile.imwrite(tmp_path / "u32.tif", np.arange(42, dtype=np.uint32).reshape(6, 7))
    tifffile.imwrite(tmp_path / "i8.tif", (np.arange(42) - 20).astype(np.int8).reshape(6, 7))
    tifffile.imwrite(tmp_path / "big.tif", np.full((6, 7), 70000, np.int32))
    for name, what in [("u32", "uint32 TIFF is not supported"), ("i8", "int8 TIFF is not supported"),
                       ("big", "outside 0..65535")]:
        with pytest.raises(fio.ImageReadError, match=rf"{name}\.tif: .*{what}"):
            fio.read_image(tmp_path / f"{name}.tif")


def test_multi_frame_refused_but_mpo_is_its_first_frame_as_jpeg(tmp_path):
    from PIL import JpegImagePlugin

    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 120, 240)]
    frames[0].save(tmp_path / "three.tif", save_all=True, append_images=frames[1:])
    rgb = [f.convert("RGB") for f in frames]
    rgb[0].save(tmp_path / "anim.png", save_all=True, append_images=rgb[1:])
    for name in ("three.tif", "anim.png"):
        with pytest.raises(fio.ImageReadError,
                           match=rf"{name}: 3 frames; multi-frame images are not supported"):
            fio.read_images(tmp_path, name)

    first = (np.random.default_rng(2).random((32, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(first).save(tmp_path / "phone.jpg", format="MPO", save_all=True,
                                append_images=[Image.fromarray(first[:16, :12])], quality=90)
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    d = fio.read_image(tmp_path / "phone.jpg")
    assert d.fmt == "JPEG" and d.pixels.shape == (3, 32, 24)
    with Image.open(tmp_path / "phone.jpg") as im:
        np.testing.assert_array_equal(d.pixels.transpose(1, 2, 0),
                                      np.asarray(im.convert("RGB")) / np.float32(255))
    fio.write_like(d, d.pixels, tmp_path / "out.jpg")
    Image.fromarray(fio.to_uint(d.pixels, 8)).save(tmp_path / "ref.jpg", quality=95, subsampling=0)
    with Image.open(tmp_path / "out.jpg") as out, Image.open(tmp_path / "ref.jpg") as ref:
        assert out.format == "JPEG" and getattr(out, "n_frames", 1) == 1
        assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4
        assert out.quantization == ref.quantization


def _srgb_icc():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_exif_orientation_icc_and_dpi_are_carried(tmp_path, name):
    icc = _srgb_icc()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x0110] = "Phone"
    rgb = (np.random.default_rng(3).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / name, exif=exif, icc_profile=icc, dpi=(300, 300))
    d = fio.read_image(tmp_path / name)
    fio.write_like(d, d.pixels, tmp_path / f"out_{name}")
    with Image.open(tmp_path / f"out_{name}") as out:
        assert out.getexif()[0x0112] == 6 and out.getexif()[0x0110] == "Phone"
        assert out.info["icc_profile"] == icc
        assert out.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert out.size == (30, 20)  # stored as the source: the viewer rotates both alike


def test_exif_in_a_png_text_chunk_is_carried(tmp_path):
    # ImageMagick keeps a PNG's EXIF as hex in a "Raw profile type exif" text chunk.
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 8
    data = exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(data):8}\n{data.hex()}\n", zip=True)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "im.png", pnginfo=info)
    d = fio.read_image(tmp_path / "im.png")
    fio.write_like(d, d.pixels, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert out.getexif()[0x0112] == 8


def test_tiff_orientation_is_applied_and_tags_carried(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = (np.arange(8 * 10) * 3 % 256).astype(np.uint8).reshape(8, 10)
    icc = _srgb_icc()
    # Uncompressed, Orientation 6 (the stored rows are the displayed columns, bottom up).
    tifffile.imwrite(tmp_path / "o.tif", a, resolution=(150, 150), resolutionunit="INCH",
                     extratags=[(274, 3, 1, 6, True), (272, 2, 0, "Scanner", True)])
    d = fio.read_image(tmp_path / "o.tif")
    np.testing.assert_array_equal(d.pixels[0], np.rot90(a, -1) / np.float32(255))
    fio.write_like(d, d.pixels, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as t:
        tags = t.pages[0].tags
        np.testing.assert_array_equal(t.asarray(), np.rot90(a, -1))
        assert 274 not in tags or tags[274].value == 1  # stored upright
        assert tags[272].value == "Scanner"
        assert tags[282].value == (150, 1) and tags[283].value == (150, 1)
        assert int(tags[296].value) == 2
    rgb = (np.random.default_rng(4).random((6, 5, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "icc.tif", icc_profile=icc)
    d = fio.read_image(tmp_path / "icc.tif")
    fio.write_like(d, d.pixels, tmp_path / "icc_out.tif")
    with Image.open(tmp_path / "icc_out.tif") as out:
        assert out.info["icc_profile"] == icc


def test_icc_profile_of_another_colour_space_is_dropped(tmp_path):
    # A grey palette PNG with an RGB profile is written as L: the profile would not fit.
    im = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).convert("P")
    im.save(tmp_path / "p.png", icc_profile=_srgb_icc())
    d = fio.read_image(tmp_path / "p.png")
    assert d.pixels.shape[0] == 1
    fio.write_like(d, d.pixels, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "L" and "icc_profile" not in out.info


def _dicom_round_trip(tmp_path, path, pixels_fn):
    pydicom = pytest.importorskip("pydicom")
    d = fio.read_image(path)
    out = tmp_path / "out.dcm"
    fio.write_like(d, pixels_fn(d.pixels), out, path)
    return d, pydicom.dcmread(path).pixel_array, pydicom.dcmread(out).pixel_array


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_bigendian.dcm"])
def test_dicom_identity_round_trip_is_exact(tmp_path, name):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    _, src, back = _dicom_round_trip(tmp_path, get_testdata_file(name), lambda p: p)
    assert back.dtype == src.dtype
    np.testing.assert_array_equal(back, src)


def test_dicom_values_outside_the_window_keep_their_stored_value(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400  # soft tissue: [-160, 240] HU
    ds.save_as(tmp_path / "ct.dcm")
    raw = ds.pixel_array.astype(np.int64)
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    outside = (hu < -160) | (hu > 240)
    assert 0.05 < outside.mean() < 0.95  # the case is meaningful
    _, src, back = _dicom_round_trip(tmp_path, tmp_path / "ct.dcm", lambda p: 1 - p)
    np.testing.assert_array_equal(back[outside], src[outside])
    # Inside: value v -> 1 - (v - lo) / (hi - lo) -> lo + hi - v in HU.
    expected = (-160 + 240 - hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
    np.testing.assert_array_equal(back[~outside], expected[~outside])


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", stat.S_ISDIR(st.st_mode), st.st_ino))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", None, None))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / "d").mkdir()
    fio.atomic_write_text(tmp_path / "d" / "x.json", "{}")
    assert (tmp_path / "d" / "x.json").read_text() == "{}"
    i = events.index(("replace", None, None))
    assert ("fsync", True, (tmp_path / "d").stat().st_ino) in events[i + 1:]
    assert any(e[0] == "fsync" and e[1] is False for e in events[:i])  # the file, before
