"""The real-image index: what retrieval and SHR need to know about the real set.

Per real image it stores the luma retrieval thumbnail (float16, method §4), the
high-band statistics per channel at the working size (method §2), its relative
path (key) and a content hash; plus the config they were made with. A sharded index
also stores each thumbnail's prefilter embedding.

Modules:
- ``config``: ``IndexConfig``, ``IndexFileError``, ``resample``, ``thumbnails``.
- ``files``: the two on-disk layouts (one file pair; manifest + shards), their writers
  and checked readers.
- ``realindex``: ``RealIndex`` (tensors at hand), ``ShardedIndex`` (lazy, shard by
  shard), ``Neighbours``.
- ``search``: exact and prefilter top-K over shards with method §4's merge.
- ``build``: ``build_index`` (parallel, appendable), ``build_shard`` and the plan /
  commit pieces a Ray job uses.
- ``ray_build``: ``build_index_ray``, the same build as one Ray task per shard (same bytes).
- ``compact``: ``compact_index``, many small appended shards rewritten as full ones
  (crash-safe; the shards of a build at once of the same files).

``RealIndex.load(path)`` opens either layout (a sharded one as a ``ShardedIndex``,
reading only its manifest), and every consumer (``calibrate_dir``, its Ray twin,
training, evaluation) takes either.
"""
from .build import (DEFAULT_SHARD_SIZE, ShardPlan, ShardResult, build_index, build_shard,
                    commit_shards, first_config, index_files, plan_shards, run_shards,
                    write_shards_from_tensors)
from .compact import compact_index
from .config import IndexConfig, IndexFileError, resample, thumbnails
from .files import FORMAT, META_FILE, SHARD_DIR, SHARDED_VERSION, TENSORS_FILE, VERSION
from .ray_build import build_index_ray
from .realindex import Neighbours, RealIndex, ShardedIndex

__all__ = ["IndexConfig", "IndexFileError", "RealIndex", "ShardedIndex", "Neighbours",
           "build_index", "build_index_ray", "compact_index", "build_shard", "plan_shards", "run_shards", "commit_shards",
           "write_shards_from_tensors", "first_config", "index_files", "ShardPlan",
           "ShardResult", "DEFAULT_SHARD_SIZE", "resample", "thumbnails", "FORMAT",
           "VERSION", "SHARDED_VERSION", "META_FILE", "TENSORS_FILE", "SHARD_DIR"]
