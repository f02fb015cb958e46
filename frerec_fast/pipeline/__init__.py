"""``calibrate_dir``: the streaming, resumable batch job that is the product's main use.

How a run works
---------------
One configuration (``CalibrateConfig``, validated once) and four parts, data flowing
one way::

    src/ ──► reader ──────────► calibrator ──────────────► writer ─────────► dst/
             scan, sha256,      micro-batches of exactly    stitch, channels,  same paths,
             decode (threads,   `model_batch` tiles:        encode like the    formats,
             bounded prefetch), retrieval ─► SHR ─► RHM     source, atomic     bit depths
             cut into tiles     (no file I/O)               write (threads)
                │                    │ failures                  │ sha256 / error
                ▼                    ▼                           ▼
             run record: manifest line per file (ok | error | already done), counts,
             progress bar; the report (timings, backends, gaps) at the end

* ``config.py``: ``CalibrateConfig``, shared by the Python API, the Ray twin and the CLI
  (whose ``frerec calibrate`` options are generated from its fields).
* ``reader.py``: which files (sorted; ``files=`` subset), ``Read`` results in input
  order, and ``Job``: one file's decoded images cut into work-size tiles.
* ``calibrator.py``: ``Calibrator`` computes pending tiles in fixed-size micro-batches
  (why fixed: its docstring); on CUDA it overlaps host work with the GPU.
* ``writer.py``: ``Writer`` encodes finished jobs on a pool, results in submission order.
* ``record.py``: where a run may write, the ``Manifest``, ``RunRecord``, the resume
  fingerprint and the report's gaps.
* ``run.py``: ``calibrate_dir`` = ``plan`` (resolve everything before ``dst`` is
  touched) + ``execute`` (the loop above); ``ShardRunner`` holds one plan and
  manifest and runs ``execute`` on file lists (a worker of ``calibrate_dir_ray``);
  ``calibrate_shard`` is one such call.

Every tile is processed independently of the others in its batch, so the bytes of an
output depend only on its input, the index, the model, the seed, the device, backends,
thread count and ``model_batch``: not on batch size, order, or how often the run was
interrupted and resumed.
"""
from .calibrator import Stages
from .config import CalibrateConfig, add_cli_options, config_from_cli, make_config
from .record import (GAP_PROTOCOL, GAP_SAMPLE, MANIFEST, REPORT, Manifest, RunLock, RunLocked,
                     RunRecord, Status, check_dirs, gaps_from_profiles, manifest_paths,
                     model_digest, prepare_dst)
from .run import MODEL_BATCH, ShardRunner, calibrate_dir, calibrate_shard

__all__ = ["CalibrateConfig", "GAP_PROTOCOL", "GAP_SAMPLE", "MANIFEST", "MODEL_BATCH", "REPORT",
           "Manifest", "RunLock", "RunLocked", "RunRecord", "ShardRunner", "Stages", "Status",
           "add_cli_options", "calibrate_dir", "calibrate_shard", "check_dirs", "config_from_cli",
           "gaps_from_profiles", "make_config", "manifest_paths", "model_digest", "prepare_dst"]
