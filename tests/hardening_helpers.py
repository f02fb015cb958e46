"""Shared pieces of the hardening tests: Python code run without the power to ignore
file permissions (root's CAP_DAC_OVERRIDE), so that chmod 000 / 555 really block, and
an index and image copies for small runs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frerec_fast.datasets import synthetic_dir

ROOT = Path(__file__).resolve().parents[1]


def pngs(n: int) -> list[Path]:
    return sorted(synthetic_dir().rglob("*.png"))[:n]


def fill(src: Path, names) -> Path:
    """Copies of shipped synthetic PNGs under ``src`` with the given names (str or bytes,
    '/' for sub-folders). Returns src."""
    for name, p in zip(names, pngs(len(names))):
        path = os.path.join(os.fsencode(src), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(p, path)
    return src


def run_without_permission_override(code: str, *args: str, timeout: float = 120):
    """Run ``python -c code args`` so that file permissions apply to it: directly for a
    normal user; for root, with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from
    the bounding set (``setpriv``), which keeps uid 0 but makes mode bits bind. Skips the
    test, saying why, where neither is possible. Returns the CompletedProcess."""
    cmd = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, which ignores file permissions, and setpriv "
                        "(util-linux) is not installed to drop that power")
        probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search",
                                "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root, which ignores file permissions, and setpriv cannot "
                        f"drop CAP_DAC_OVERRIDE here ({probe.stderr.strip()})")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_blocked(path: Path) -> None:
    """Skip unless reading ``path`` is refused for the unprivileged runner (a
    filesystem that ignores mode bits, or a capability setpriv could not drop)."""
    proc = run_without_permission_override(
        "import sys\ntry:\n    open(sys.argv[1], 'rb').close()\nexcept PermissionError:\n"
        "    sys.exit(3)\n", str(path), timeout=30)
    if proc.returncode != 3:
        pytest.skip(f"{path} is chmod 000 but still readable here (root without a way to "
                    "drop its override, or a filesystem without permissions)")
