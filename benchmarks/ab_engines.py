"""Interleaved A/B of RHM engines on a shared machine: each round times every engine
once, in turn, so that load from other processes falls on all of them alike; the
medians over rounds are compared (pytest-benchmark runs one engine after another,
which a neighbour's burst can skew).

    python benchmarks/ab_engines.py [--sizes 64 256] [--rounds 5] [--out results/x.json]

Shipped model, micro-batch 8, random inputs in [0, 1]; engines are built (and int8
quantised, or read from its cache) and warmed up before the first round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

ENGINES = [("eager", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="write the times as JSON here")
    a = p.parse_args()
    import frerec_fast as ff
    from frerec_fast.engine.names import check_engine_device
    result = {"threads": torch.get_num_threads(), "rounds": a.rounds, "sizes": {}}
    for size in a.sizes:
        x = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(0))
        engines = {}
        for engine, precision in ENGINES:
            try:
                check_engine_device(engine, precision, torch.device("cpu"))
            except (ValueError, ImportError) as e:
                print(f"skip {engine} {precision}: {e}")
                continue
            eng = ff.load_rhm(engine=engine, precision=precision, micro_batch=8)
            eng(x)  # build (and quantise), then one warm-up call
            eng(x)
            engines[f"{engine}-{precision}"] = eng
        times = {k: [] for k in engines}
        for _ in range(a.rounds):
            for k, eng in engines.items():
                t0 = time.perf_counter()
                eng(x)
                times[k].append(time.perf_counter() - t0)
        ref = statistics.median(times["eager-fp32"])
        rows = {}
        for k, ts in times.items():
            med = statistics.median(ts)
            rows[k] = {"median_s": med, "min_s": min(ts), "max_s": max(ts),
                       "x_eager_fp32": ref / med, "times_s": ts}
            print(f"{size}x{size} {k:15s} median {med * 1e3:9.1f} ms  min {min(ts) * 1e3:9.1f}"
                  f"  max {max(ts) * 1e3:9.1f}  x{ref / med:5.2f} eager fp32")
        result["sizes"][str(size)] = rows
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
