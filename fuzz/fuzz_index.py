"""atheris harness: ``RealIndex.load`` on a mutated index.json or index.safetensors (the
checksum recomputed or not). Contract: a usable index or IndexFileError (fuzz/targets.py).

    python fuzz/fuzz_index.py -max_total_time=3600 -timeout=20 -rss_limit_mb=4096 corpus/index
"""
import sys
import tempfile
import warnings
from pathlib import Path

import _harness

with _harness.instrumented():  # what is imported here gives coverage feedback
    import targets
    import frerec_fast.index  # noqa: F401
    import safetensors.torch  # noqa: F401

warnings.simplefilter("ignore")


def main() -> None:
    # The partner of the mutated file comes from a fresh, valid index.
    seeds = targets.read_seed_dir(targets.seed_index(Path(tempfile.mkdtemp(prefix="frerec-seed-"))))
    _harness.write_seeds(_harness.corpus_dir("index"), _harness.pair_seeds(seeds, "index.safetensors"))
    _harness.fuzz(lambda data, scratch: targets.index_input(data, seeds, scratch))


if __name__ == "__main__":
    sys.exit(main())
