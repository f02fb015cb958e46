"""The image readers on damaged real files: PNG (8 and 16 bit), JPEG, TIFF, BMP, DICOM and
NIfTI (.nii, .nii.gz) made from a shipped image, then cut, bit-flipped and stuffed with
junk (seeded). Each case reads to valid images or raises ImageReadError naming the file:
never another exception, a crash or a hang (a child process, a per-case watchdog).
And headers that claim far more than the file holds cost no memory."""
import gzip
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from frerec_fast import io as fio
from hardening_helpers import ROOT

sys.path.insert(0, str(ROOT / "fuzz"))
import targets  # noqa: E402  (fuzz/targets.py: seeds and the read contract)

CASES = 80  # per format: about 4 s for all eight on one core


def test_damaged_files_of_every_format_read_or_fail_with_a_read_error():
    proc = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "fuzz" / "targets.py"),
                           "--mutate", str(CASES), "--seed", "14", "--timeout", "30"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(counts) == set(targets.reader_formats())
    for fmt, c in counts.items():
        assert c["ok"] + c["error"] == CASES and c["ok"] >= 1 and c["error"] >= 5, (fmt, c)


def test_seed_files_read_as_what_they_are(tmp_path):
    for fmt, blob in targets.seed_files().items():
        assert targets.read_case(blob, fmt, tmp_path) == "ok", fmt


def nifti_header(shape, dtype=np.int16) -> bytes:
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_data_offset(352)
    return bytes(hdr.binaryblock) + b"\0" * 4 + b"\0" * 1000  # 1 kB of "data"


def read_error_and_peak(root, rel) -> tuple[str, int]:
    """(the ImageReadError's message, peak bytes Python and numpy allocated meanwhile)."""
    tracemalloc.start()
    try:
        with pytest.raises(fio.ImageReadError) as info:
            fio.read_images(root, rel)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return str(info.value), peak


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_a_nifti_header_claiming_gigabytes_costs_no_memory(tmp_path, ext):
    # nibabel allocates the claimed size before reading: a 1 kB file claiming 2 GB used
    # to take 2 GB (and a gzip bomb all it inflates to).
    for shape, msg in (((1000, 1000, 1000), "cut short: the header needs 2000000352 bytes"),
                       ((4000, 4000, 100), "too large to decode safely")):
        data = nifti_header(shape)
        (tmp_path / f"v{ext}").write_bytes(gzip.compress(data) if ext.endswith(".gz") else data)
        err, peak = read_error_and_peak(tmp_path, f"v{ext}")
        assert peak < 50 << 20, f"{peak >> 20} MiB allocated for a {len(data)}-byte file"
        assert f"v{ext}: NIfTI" in err and msg in err, err


def dicom_with(tmp_path, **elements):
    pydicom = pytest.importorskip("pydicom")
    path = tmp_path / "x.dcm"
    path.write_bytes(targets.seed_files()[".dcm"])
    ds = pydicom.dcmread(path)
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_dicom_headers_claiming_huge_or_many_frames_are_refused_before_decoding(tmp_path):
    dicom_with(tmp_path, Rows=30000, Columns=30000)
    with pytest.raises(fio.ImageReadError, match=r"x.dcm: DICOM of 30000x30000 pixels: image too large"):
        fio.read_images(tmp_path, "x.dcm")
    dicom_with(tmp_path, NumberOfFrames=5000)
    with pytest.raises(fio.ImageReadError, match="5000 frame.*multi-frame"):
        fio.read_images(tmp_path, "x.dcm")


def test_a_deflated_dicom_is_inflated_within_the_pixel_limit(tmp_path, monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image
    path = dicom_with(tmp_path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert fio.read_images(tmp_path, "x.dcm")[0].pixels.shape == (1, 24, 24)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the file inflates past 400 bytes
    with pytest.raises(fio.ImageReadError, match="deflated DICOM inflates past 400 bytes"):
        fio.read_images(tmp_path, "x.dcm")
