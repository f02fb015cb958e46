"""atheris harness: the image readers (PNG, JPEG, TIFF, BMP, DICOM, NIfTI) on mutated
files. Contract: valid images or ImageReadError naming the file (fuzz/targets.py).

    python fuzz/fuzz_readers.py -max_total_time=3600 -timeout=20 -rss_limit_mb=4096 corpus/readers
"""
import sys
import warnings

import _harness

with _harness.instrumented():  # what is imported here gives coverage feedback
    import targets
    from PIL import Image

    import frerec_fast.io  # noqa: F401
    Image.init()  # the format plugins, imported now so that they are instrumented
    for name in ("pydicom", "nibabel"):  # optional readers
        try:
            __import__(name)
        except ImportError:
            pass

warnings.simplefilter("ignore")  # decoders warn about damaged files: expected here


def main() -> None:
    _harness.write_seeds(_harness.corpus_dir("readers"), targets.reader_seeds())
    _harness.fuzz(targets.reader_input)


if __name__ == "__main__":
    sys.exit(main())
