"""Error types shared by the dispatch layer and the compiled extension's loader.

They live here, apart from both, so that ``_ext`` can raise ``BackendUnavailable``
without importing ``backends`` (which imports ``_ext``)."""
from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""
