"""Decoding real files on disk: PNG 8/16-bit, JPEG, TIFF, DICOM, NIfTI, and bad input."""
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
