"""The real-image index: what retrieval and SHR need to know about the real set.

Per real image it stores the luma retrieval thumbnail (float16, method §4), the
high-band statistics per channel at the working size (method §2), its relative
path (key) and a content hash; plus the config they were made with.

On disk an index is a directory with two files, written atomically:
``index.safetensors`` (tensors ``thumbs [N, 1, h, w] f16``, ``mu [N, C] f32``,
``sigma [N, C] f32``) and ``index.json`` (format, version, config, keys, hashes,
and the SHA-256 of the tensor file). Loading checks format, version and checksum
and refuses a file that does not match, saying what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from . import io as fio
from .channels import to_channels
from .ops import band_stats, ssim_topk
from .progress import bar as progress_bar
from .reference.checks import DOMAINS, WIN, band_is_empty
from .spectral import luma

log = logging.getLogger("frerec_fast")

FORMAT = "frerec_fast.index"
VERSION = 1
TENSORS_FILE = "index.safetensors"
META_FILE = "index.json"


class IndexFileError(ValueError):
    """An index file is missing, corrupt, or of another version."""


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _strict_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return v


@dataclass(frozen=True)
class IndexConfig:
    """How an index was made. Checked on creation: ratio in [0, 1] with a non-empty
    high band at the working size, a known domain, sizes of at least 1 pixel (the
    retrieval size at least SSIM's 11x11 window), 1 or 3 channels."""
    ratio: float = 0.5
    domain: str = "complex"
    work_size: tuple[int, int] = (64, 64)
    retrieval_size: tuple[int, int] = (64, 64)
    channels: int = 1

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) \
                or not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1], got {self.ratio!r}")
        object.__setattr__(self, "ratio", float(self.ratio))  # JSON-able (numpy floats)
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        for name, least in (("work_size", 1), ("retrieval_size", WIN)):
            size = getattr(self, name)
            if not isinstance(size, tuple) or len(size) != 2 or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < least for v in size):
                raise ValueError(f"{name} must be two integers >= {least}, got {size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if band_is_empty(*self.work_size, self.ratio):
            raise ValueError(f"the high band of the {self.work_size} working size at ratio "
                             f"{self.ratio} is empty")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        """From ``to_dict``'s form, strictly typed (an index file is untrusted input):
        ValueError saying which field is missing or wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        missing = {"ratio", "domain", "work_size", "retrieval_size", "channels"} - set(d)
        if missing:
            raise ValueError(f"config lacks {sorted(missing)}")
        sizes = {}
        for name in ("work_size", "retrieval_size"):
            v = d[name]
            if not isinstance(v, list) or len(v) != 2:
                raise ValueError(f"{name} must be a list [height, width], got {v!r}")
            sizes[name] = tuple(_strict_int(name, x) for x in v)
        if not isinstance(d["domain"], str):
            raise ValueError(f"domain must be a string, got {d['domain']!r}")
        return cls(ratio=d["ratio"], domain=d["domain"], channels=_strict_int("channels",
                   d["channels"]), **sizes)


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an image batch: area averaging when shrinking (method §4), bicubic
    (clamped to [0, 1]) when enlarging; unchanged at the same size.

    x: [B, C, H, W]. Returns: [B, C, size[0], size[1]].
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def thumbnails(x: torch.Tensor, retrieval_size: tuple[int, int]) -> torch.Tensor:
    """Luma retrieval thumbnails (method §4). x: [B, C, H, W] -> [B, 1, h, w] float32."""
    return resample(luma(x.float()), retrieval_size)


@dataclass
class Neighbours:
    """Top-K neighbours of a query batch and their statistics, ready for ``shr``.

    ids, scores: [B, K]; mu_bank, sigma_bank: [B, K, C].
    """
    ids: torch.Tensor
    scores: torch.Tensor
    mu_bank: torch.Tensor
    sigma_bank: torch.Tensor


@dataclass
class RealIndex:
    """A loaded real-image index (see module docstring)."""
    config: IndexConfig
    thumbs: torch.Tensor          # [N, 1, h, w] float16
    mu: torch.Tensor              # [N, C] float32
    sigma: torch.Tensor           # [N, C] float32
    keys: list[str]
    hashes: list[str]
    skipped: list[dict] = field(default_factory=list)
    path: Path | None = None

    def __post_init__(self):
        self._positions = {k: i for i, k in enumerate(self.keys)}
        # Per-device copies of the tensors, made once: a GPU job must not re-upload the
        # whole index for every batch. Not a dataclass field, so dataclasses.replace()
        # (which may swap a tensor) starts with an empty cache.
        self._device_copies: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._embeddings: dict[str, torch.Tensor] = {}

    def tensors_on(self, device: torch.device | str):
        """(thumbs, mu, sigma) on ``device``, copied once and cached (CPU: no copy)."""
        key = str(torch.device(device))
        got = self._device_copies.get(key)
        if got is None:
            with torch.inference_mode(False):  # cached: must outlive an inference-mode caller
                got = (self.thumbs.to(device), self.mu.to(device), self.sigma.to(device))
            self._device_copies[key] = got
        return got

    def embedding_on(self, device: torch.device | str) -> torch.Tensor:
        """The prefilter embeddings of the thumbnails [N, t * t] on ``device``, computed
        once and cached (``prefilter.embed_db``)."""
        key = str(torch.device(device))
        got = self._embeddings.get(key)
        if got is None:
            from .prefilter import embed_db
            with torch.inference_mode(False):
                got = embed_db(self.tensors_on(device)[0], device=device)
            self._embeddings[key] = got
        return got

    def __len__(self) -> int:
        return len(self.keys)

    def position(self, key: str) -> int:
        """Index position of a real image by its key (relative path), or -1."""
        return self._positions.get(key, -1)

    def thumbnails(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, 1, h, w] float32 at this index's retrieval size."""
        return thumbnails(x, self.config.retrieval_size)

    def neighbours(self, queries: torch.Tensor, k: int = 200,
                   exclude: torch.Tensor | Sequence[int] | None = None,
                   backend: str = "auto", mode: str = "exact",
                   candidates: int | None = None) -> Neighbours:
        """Top-k real neighbours by SSIM of each query and their band statistics.

        queries: [B, C, H, W] float in [0, 1] (any size; thumbnailed here).
        exclude: optional [B] index positions to skip (self-exclusion; -1 for none).
        mode: "exact" or "prefilter" (``candidates`` short-listed per query by the
        cached embeddings, then exact SSIM; see ``frerec_fast.prefilter``).
        Returns: Neighbours with ids, scores [B, k'] and banks [B, k', C],
        k' = min(k, N) (N - 1 with exclude).
        """
        q = self.thumbnails(queries)
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long, device=q.device)
        thumbs, mu, sigma = self.tensors_on(q.device)
        extra = {}
        if mode == "prefilter":
            extra = {"candidates": candidates, "db_embedding": self.embedding_on(q.device)}
        scores, ids = ssim_topk(q, thumbs, k, exclude=exclude, mode=mode, backend=backend,
                                **extra)
        # Gather on the queries' device: no round trip of the ids through the host.
        return Neighbours(ids, scores, mu[ids], sigma[ids])

    # -- persistence -------------------------------------------------------
    def save(self, out: str | os.PathLike) -> Path:
        """Write ``out/index.safetensors`` and ``out/index.json`` atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"thumbs": self.thumbs.contiguous(), "mu": self.mu.contiguous(),
                   "sigma": self.sigma.contiguous()}
        from safetensors.torch import save

        blob = save(tensors)
        fio.atomic_write_bytes(out / TENSORS_FILE, blob)
        meta = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                "count": len(self), "tensors_sha256": hashlib.sha256(blob).hexdigest(),
                "keys": self.keys, "hashes": self.hashes, "skipped": self.skipped}
        fio.atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "RealIndex":
        """Load an index directory (or its index.json / index.safetensors).

        mmap=True maps the tensor file (pages load on demand); mmap=False copies it
        into memory. verify=True checks the SHA-256 recorded in index.json.

        Both files are untrusted input: never unpickled (safetensors and JSON only), and
        every field is checked (types, config ranges, tensor names, dtypes and shapes,
        finite values, sigma >= 0, thumbnails in [0, 1], unique keys) before use, so a
        damaged or forged index raises IndexFileError saying what is wrong.
        """
        from safetensors.torch import load_file

        path = Path(path)
        root = path.parent if path.is_file() else path
        meta_p, tens_p = root / META_FILE, root / TENSORS_FILE
        for p in (meta_p, tens_p):
            if not p.is_file():
                raise IndexFileError(f"{p}: missing; build an index with `frerec index REAL_DIR OUT`")
        try:
            meta = json.loads(meta_p.read_bytes())
        except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, nesting too deep
            raise IndexFileError(f"{meta_p}: not valid JSON ({type(e).__name__}: "
                                 f"{str(e)[:200]}); rebuild the index") from e
        if not isinstance(meta, dict):
            raise IndexFileError(f"{meta_p}: not a frerec_fast index (a JSON "
                                 f"{type(meta).__name__}, not an object)")
        if meta.get("format") != FORMAT:
            raise IndexFileError(f"{meta_p}: not a frerec_fast index (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise IndexFileError(f"{meta_p}: index version {meta.get('version')} but this frerec_fast "
                              f"reads version {VERSION}; rebuild it with `frerec index`")
        n, cfg, keys, hashes, skipped = _check_meta(meta_p, meta)
        if verify:
            digest = fio.file_sha256(tens_p)
            if digest != meta.get("tensors_sha256"):
                raise IndexFileError(f"{tens_p}: checksum mismatch (file {digest[:12]}..., "
                                  f"index.json says {str(meta.get('tensors_sha256'))[:12]}...): "
                                  f"the file is corrupt or was changed; rebuild the index")
        try:
            t = load_file(str(tens_p))
        except Exception as e:  # safetensors' own errors: header size, offsets, dtypes
            raise IndexFileError(f"{tens_p}: cannot read tensors ({e}); rebuild the index") from e
        expect = {"thumbs": ((n, 1, *cfg.retrieval_size), torch.float16),
                  "mu": ((n, cfg.channels), torch.float32),
                  "sigma": ((n, cfg.channels), torch.float32)}
        if set(t) != set(expect):
            raise IndexFileError(f"{tens_p}: holds tensors {sorted(t)}, expected "
                                 f"{sorted(expect)}")
        for name, (shape, dtype) in expect.items():
            if tuple(t[name].shape) != shape or t[name].dtype != dtype:
                raise IndexFileError(f"{tens_p}: tensor {name!r} is {t[name].dtype} of shape "
                                     f"{tuple(t[name].shape)}, expected {dtype} of shape {shape}")
        for name, lo, hi in (("thumbs", 0.0, 1.0), ("mu", -math.inf, math.inf),
                             ("sigma", 0.0, math.inf)):
            least, most = (float(v) for v in torch.aminmax(t[name]))
            if not (math.isfinite(least) and math.isfinite(most) and lo <= least
                    and most <= hi):
                raise IndexFileError(f"{tens_p}: tensor {name!r} holds values from {least} to "
                                     f"{most}, expected finite values in [{lo}, {hi}]; "
                                     "rebuild the index")
        if not mmap:
            t = {k: v.clone() for k, v in t.items()}
        return cls(cfg, t["thumbs"], t["mu"], t["sigma"], keys, hashes, skipped, root)


def _check_meta(meta_p: Path, meta: dict):
    """(count, config, keys, hashes, skipped) of an index.json, each checked."""
    n = meta.get("count")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise IndexFileError(f"{meta_p}: count must be a positive integer, got {n!r}")
    try:
        cfg = IndexConfig.from_dict(meta.get("config"))
    except (ValueError, TypeError) as e:
        raise IndexFileError(f"{meta_p}: bad config: {e}") from e
    lists = {}
    for name in ("keys", "hashes"):
        v = meta.get(name)
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, str) for x in v):
            what = f"{len(v)} entries" if isinstance(v, list) else repr(type(v).__name__)
            raise IndexFileError(f"{meta_p}: {name} must be a list of {n} strings (one per "
                                 f"image), got {what}")
        lists[name] = list(v)
    if len(set(lists["keys"])) != n:
        raise IndexFileError(f"{meta_p}: keys are not unique (one entry per image)")
    skipped = meta.get("skipped", [])
    if not isinstance(skipped, list):
        raise IndexFileError(f"{meta_p}: skipped must be a list, got {type(skipped).__name__}")
    return n, cfg, lists["keys"], lists["hashes"], skipped


def _decode(root: Path, rel: str):
    try:
        items = fio.read_images(root, rel)
        return rel, items, fio.file_sha256(root / rel), None
    except (fio.ImageReadError, ImportError, OSError) as e:
        return rel, [], None, str(e)


def _windows(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def build_index(real_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                ratio: float = 0.5, domain: str = "complex", work_size=None,
                retrieval_size=64, channels: int | None = None, batch_size: int = 64,
                workers: int = 4, backend: str = "auto", progress: bool = True) -> RealIndex:
    """Scan ``real_dir`` recursively and build (and, with ``out``, save) a RealIndex.

    work_size: (H, W) or int at which band statistics are computed; None takes the
    first image's size (images of other sizes are resampled to it, and a warning
    says how many). channels: 1 or 3; None takes the first image's count (others
    are converted: grey -> RGB by replication, RGB -> grey by luma).
    Unreadable files are skipped, logged, and listed under ``skipped``.
    """
    root = Path(real_dir)
    rels = fio.scan_images(root)
    if not rels:
        raise FileNotFoundError(f"{root}: no supported images found "
                                f"(looked for {', '.join(fio.SUPPORTED_EXTS)})")
    cfg: IndexConfig | None = None
    if work_size is not None and channels is not None:
        cfg = IndexConfig(ratio, domain, _pair(work_size), _pair(retrieval_size), int(channels))
    thumbs, mus, sigmas, keys, hashes, skipped = [], [], [], [], [], []
    n_resized = n_converted = 0
    bar = progress_bar(len(rels), "index", "file", progress)
    batch: list[torch.Tensor] = []

    def flush():
        if not batch:
            return
        x = torch.stack(batch)
        mu, sigma = band_stats(x, ratio=cfg.ratio, domain=cfg.domain, backend=backend)
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
        thumbs.append(thumbnails(x, cfg.retrieval_size).half())
        batch.clear()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for window in _windows(rels, max(batch_size, 16)):
            for rel, items, digest, err in pool.map(lambda r: _decode(root, r), window):
                bar.update(1)
                if err is not None:
                    log.warning("skipping %s", err)
                    skipped.append({"path": rel, "error": err})
                    continue
                for d in items:
                    px = torch.from_numpy(d.pixels)
                    if cfg is None:
                        cfg = IndexConfig(ratio, domain,
                                          _pair(work_size) or tuple(px.shape[-2:]),
                                          _pair(retrieval_size) or tuple(px.shape[-2:]),
                                          int(channels or px.shape[0]))
                    if px.shape[0] != cfg.channels:
                        n_converted += 1
                        px = to_channels(px[None], cfg.channels)[0]
                    if tuple(px.shape[-2:]) != cfg.work_size:
                        n_resized += 1
                        px = resample(px[None], cfg.work_size)[0]
                    batch.append(px)
                    keys.append(d.key)
                    hashes.append(digest)
                    if len(batch) >= batch_size:
                        flush()
    flush()
    bar.close()
    if not keys:
        raise ValueError(f"{root}: none of {len(rels)} files could be read; first error: "
                         f"{skipped[0]['error'] if skipped else '?'}")
    if n_resized:
        log.warning("%d image(s) resampled to the working size %s", n_resized, cfg.work_size)
    if n_converted:
        log.warning("%d image(s) converted to %d channel(s)", n_converted, cfg.channels)
    index = RealIndex(cfg, torch.cat(thumbs), torch.cat(mus), torch.cat(sigmas), keys, hashes,
                      skipped)
    if out is not None:
        index.save(out)
    return index
