"""The small RHM shipped with the package (see ``frerec_fast/data/rhm/MODEL_CARD.md``)."""
from __future__ import annotations

from pathlib import Path

DEFAULT_NAME = "rhm_default"
# The paper's ablation partner of the default model: same data, command and budget,
# plain Restormer blocks (--no-fesa). ``frerec eval`` uses it for the "RHM w/o FESA" row.
NOFESA_NAME = "rhm_nofesa"


def default_model_path(name: str = DEFAULT_NAME) -> Path:
    """``frerec_fast/data/rhm/rhm_default.safetensors`` (its config: the ``.json`` beside it);
    ``name=NOFESA_NAME`` gives the shipped no-FESA ablation model.

    Raises FileNotFoundError with a hint when the package was installed without its data.
    """
    from importlib import resources

    path = Path(str(resources.files("frerec_fast") / "data" / "rhm" / f"{name}.safetensors"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped default RHM is missing; reinstall "
                                f"frerec_fast with its package data, or train one with "
                                f"`python -m frerec_fast.training`")
    return path
