"""Print the speed-up table of a benchmark run: each backend's median time against
the naive torch reference of the same group, from the same run.

    python benchmarks/ratios.py benchmarks/results/<file>.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

REFERENCE = "torch"


def rows_from(benchmarks: list[dict]) -> list[tuple]:
    """benchmarks: pytest-benchmark JSON entries (with stats.median and extra_info)."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in benchmarks:
        info = b.get("extra_info", {})
        groups[b.get("group") or b["name"]][info.get("backend", b["name"])] = b
    rows = []
    for group in sorted(groups):
        ref = groups[group].get(REFERENCE)
        for backend, b in sorted(groups[group].items()):
            med = b["stats"]["median"]
            ratio = ref["stats"]["median"] / med if ref else float("nan")
            per_s = b.get("extra_info", {}).get("items", 0) / med if med else float("nan")
            rows.append((group, backend, med * 1e3, per_s, ratio,
                         b.get("extra_info", {}).get("psnr_vs_eager_fp32_db")))
    return rows


def format_table(rows: list[tuple], device: str = "") -> str:
    head = (f"{'group':<34}{'backend':<12}{'median ms':>12}{'items/s':>14}{'x torch':>10}"
            f"{'PSNR dB':>9}")
    lines = [f"speed-up vs naive torch{(' on ' + device) if device else ''}", head, "-" * len(head)]
    for g, b, ms, per_s, r, db in rows:
        q = "" if db is None else f"{db:>9.1f}"
        lines.append(f"{g:<34}{b:<12}{ms:>12.3f}{per_s:>14.0f}{r:>10.2f}{q}")
    return "\n".join(lines)


def main(path: str) -> None:
    data = json.loads(open(path).read())
    device = data.get("machine_info", {}).get("frerec_device", "")
    print(format_table(rows_from(data["benchmarks"]), device))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
