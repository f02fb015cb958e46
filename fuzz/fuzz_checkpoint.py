"""atheris harness: ``load_rhm`` on a mutated rhm.json or rhm.safetensors (the checksum
recomputed or not). Contract: an RHM or CheckpointError, never pickle (fuzz/targets.py).

    python fuzz/fuzz_checkpoint.py -max_total_time=3600 -timeout=20 -rss_limit_mb=4096 corpus/checkpoint
"""
import sys
import tempfile
import warnings
from pathlib import Path

import _harness

with _harness.instrumented():  # what is imported here gives coverage feedback
    import targets
    import frerec_fast.model.checkpoint  # noqa: F401
    import safetensors.torch  # noqa: F401

warnings.simplefilter("ignore")


def main() -> None:
    stem = targets.seed_checkpoint(Path(tempfile.mkdtemp(prefix="frerec-seed-")))
    seeds = {p.name: p.read_bytes() for p in (stem.with_suffix(".json"),
                                              stem.with_suffix(".safetensors"))}
    _harness.write_seeds(_harness.corpus_dir("checkpoint"), _harness.pair_seeds(seeds, "rhm.safetensors"))
    _harness.fuzz(lambda data, scratch: targets.checkpoint_input(data, seeds, scratch))


if __name__ == "__main__":
    sys.exit(main())
