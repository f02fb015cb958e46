"""Benchmark options. ``pytest benchmarks/ --benchmark`` runs the benchmarks, saves
JSON under benchmarks/results/ named after the device, and prints the ratio table
against the naive torch reference. pytest-benchmark's own flags work as usual
(``--benchmark-only``, ``--benchmark-json``, ``--benchmark-compare``,
``--benchmark-disable`` for a single smoke run as CI does)."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ratios import format_table, rows_from  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform
    try:
        import cpuinfo
        cpu = cpuinfo.get_cpu_info().get("brand_raw", platform.processor())
    except Exception:
        cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{torch.get_num_threads()} threads"


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmarks, save JSON in benchmarks/results/ and print ratios")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("--benchmark"):
        config.option.benchmark_enable = True
        config.option.benchmark_disable = False
        if not config.getoption("benchmark_json"):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name()).strip("-").lower()
            RESULTS.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config.option.benchmark_json = RESULTS / f"{slug}-{stamp}.json"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["frerec_device"] = device_name()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda"] = torch.version.cuda


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks:
        return
    entries = [{"name": b.name, "group": b.group, "extra_info": b.extra_info,
                "stats": {"median": b.stats.median}} for b in bs.benchmarks if b.stats]
    terminalreporter.write_line("")
    terminalreporter.write_line(format_table(rows_from(entries), device_name()))
    if config.getoption("benchmark_json"):
        terminalreporter.write_line(f"saved: {config.getoption('benchmark_json')}")


@pytest.fixture
def bench_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
