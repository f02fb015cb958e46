"""The one progress-bar helper: tqdm when it is installed and wanted, else a no-op."""
from __future__ import annotations


class NoBar:
    """The bar's interface doing nothing (progress off, or tqdm missing)."""
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar of ``total`` units starting at ``initial``, or a NoBar."""
    if not enabled:
        return NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                smoothing=0.1)
