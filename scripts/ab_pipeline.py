"""A/B end-to-end rates of two checkouts of the project on the bundled synthetic set.

    git worktree add /tmp/ab_old <commit>   # then copy frerec_fast/_C*.so into it
    .venv/bin/python scripts/ab_pipeline.py --a /tmp/ab_old --b . --rounds 5

Each measurement is a fresh process importing ``frerec_fast`` from one checkout and
running ``calibrate_dir`` on the 256 shipped DCGAN images (one torch thread, CPU) into a
fresh folder: SHR only, and the shipped RHM. A and B alternate round by round so that a
change in machine load hits both. Prints the median images/s per checkout and case and
the ratio B/A; ``--json`` saves them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import json, sys, torch
torch.set_num_threads(1)
import frerec_fast as ff
from frerec_fast.datasets import synthetic_dir
from frerec_fast.pipeline import calibrate_dir
index, dst, case = sys.argv[1:4]
rep = calibrate_dir(synthetic_dir(), dst, index=index, device="cpu", progress=False,
                    model=False if case == "shr_only" else None)
assert rep["ok"] == 256 and rep["failed"] == 0, rep["errors"]
print(json.dumps({"images_per_s": rep["images_per_s"], "file": ff.__file__}))
"""


def measure(root: Path, index: Path, case: str, work: Path) -> float:
    dst = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", RUN, str(index), str(dst), case], env=env,
                         capture_output=True, text=True, check=True, cwd=work)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(root.resolve()), got["file"]
    return got["images_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    p.add_argument("--b", type=Path, required=True, help="checkout B")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="frerec_ab_"))
    env = {**os.environ, "PYTHONPATH": str(a.b)}
    index = work / "index"
    subprocess.run([sys.executable, "-c", "import frerec_fast as ff; from frerec_fast.datasets "
                    f"import real_dir; ff.build_index(real_dir('train'), {str(index)!r}, "
                    "progress=False)"], env=env, check=True)
    rates: dict = {}
    for r in range(a.rounds):
        for case in ("shr_only", "rhm_default"):
            for name, root in (("a", a.a), ("b", a.b)) if r % 2 == 0 else (("b", a.b), ("a", a.a)):
                v = measure(root, index, case, work)
                rates.setdefault(case, {}).setdefault(name, []).append(v)
                print(f"round {r + 1} {case:<12} {name}: {v:7.1f} img/s", flush=True)
    summary = {case: {"a_median": statistics.median(v["a"]), "b_median": statistics.median(v["b"]),
                      "ratio_b_over_a": statistics.median(v["b"]) / statistics.median(v["a"]),
                      "a": v["a"], "b": v["b"]} for case, v in rates.items()}
    for case, s in summary.items():
        print(f"{case:<12} A {s['a_median']:.1f} img/s, B {s['b_median']:.1f} img/s, "
              f"B/A {s['ratio_b_over_a']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"a": str(a.a), "b": str(a.b), "rounds": a.rounds,
                                      "cases": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
