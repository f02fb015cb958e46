"""Optional dependencies of ``frerec eval`` (scikit-learn, SciPy, matplotlib,
torchvision), imported through ``frerec_fast.optional.optional_import`` with the right
pip name in the hint (the import name of scikit-learn is ``sklearn``)."""
from __future__ import annotations


def _torchvision_pin() -> str:
    """The torchvision release made for this torch (torch 2.N pairs with 0.(N + 15))."""
    import torch

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return f"torchvision==0.{minor + 15}.*" if major == 2 else "torchvision"


def pip_name(top: str) -> str:
    return {"sklearn": "scikit-learn", "scipy": "scipy", "matplotlib": "matplotlib",
            "torchvision": f"'{_torchvision_pin()}' (the release matching your torch; an "
                           f"unpinned install may replace torch)"}.get(top, top)


def need(name: str, purpose: str):
    """Import ``name`` or raise ImportError saying what needs it and the pip command."""
    from ..optional import optional_import

    try:
        return optional_import(name, purpose)
    except ImportError as e:
        top = name.split(".")[0]
        raise ImportError(f"{name} is needed for {purpose} but is not installed: "
                          f"pip install {pip_name(top)}") from e.__cause__ or e
