"""Build of frerec_fast: the Python package plus the C++ extension ``frerec_fast._C``.

Environment switches (see README, "Building"):
  FREREC_NO_EXT=1           build no compiled code (pure-Python install; torch backends only)
  FREREC_SKIP_CUDA_BUILD=1  never build the CUDA part, even with a CUDA torch and nvcc
  FREREC_FORCE_CUDA=1       build the CUDA part even when no GPU is visible (needs a CUDA torch)
  FREREC_CUDA_ARCHS="80;90" target architectures for the CUDA part (default: 80;90)
  MAX_JOBS                  parallel compile jobs (torch's ninja builder)
"""
import glob
import os
import sys

from setuptools import find_namespace_packages, find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _pip_cuda_includes() -> list:
    """Header folders of the NVIDIA pip wheels a CUDA torch depends on (nvidia/*/include,
    nvidia/cu13/include): a system CUDA toolkit without some of the libraries whose
    headers ATen/cuda includes (cusparse.h, cublas_v2.h) still builds the bindings. They
    come after every other include path (-idirafter), so a full toolkit still wins."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [flag for d in found for flag in ("-idirafter", d)]


def _extensions():
    if _flag("FREREC_NO_EXT"):
        print("frerec_fast: FREREC_NO_EXT=1, building no compiled extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    sources = ["csrc/bindings.cpp", *cpu_sources]
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    link = ["-fopenmp"]
    want_cuda = not _flag("FREREC_SKIP_CUDA_BUILD") and torch.version.cuda is not None \
        and CUDA_HOME is not None and (torch.cuda.is_available() or _flag("FREREC_FORCE_CUDA"))
    if want_cuda:
        archs = os.environ.get("FREREC_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        ext = CUDAExtension(
            "frerec_fast._C", sources + cu_sources + sorted(glob.glob("csrc/cuda/*.cpp")),
            define_macros=[("FREREC_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx + _pip_cuda_includes(),
                                "nvcc": ["-O3", "-std=c++17", *gencode]},
            extra_link_args=link)
        print(f"frerec_fast: building C++ + CUDA extension for sm {archs}", file=sys.stderr)
    else:
        why = ("FREREC_SKIP_CUDA_BUILD=1" if _flag("FREREC_SKIP_CUDA_BUILD") else
               "torch has no CUDA" if torch.version.cuda is None else
               "nvcc/CUDA_HOME not found" if CUDA_HOME is None else
               "no GPU visible (set FREREC_FORCE_CUDA=1 to build anyway)")
        print(f"frerec_fast: building the C++ CPU extension only ({why})", file=sys.stderr)
        ext = CppExtension("frerec_fast._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _ship_cuda_sources() -> None:
    """Copy csrc/cuda/*.cu into frerec_fast/_cuda_src so that a wheel carries them: the
    CuPy/NVRTC backend compiles them at run time where _C was built without CUDA."""
    import shutil

    dst = os.path.join(ROOT, "frerec_fast", "_cuda_src")
    os.makedirs(dst, exist_ok=True)
    for cu in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        shutil.copy2(cu, dst)


_ship_cuda_sources()
ext_modules, cmdclass = _extensions()
DATA_PACKAGES = find_namespace_packages(include=["frerec_fast.data", "frerec_fast.data.*"])

setup(
    name="frerec_fast",
    version="0.1.0",
    description="Fast FreRec: frequency recalibration of AI-synthesised medical images",
    # The bundled images and weights live in plain folders under frerec_fast/data; listing
    # them as (namespace) packages is what makes setuptools ship their files.
    packages=sorted(set(find_packages(include=["frerec_fast", "frerec_fast.*"]) + DATA_PACKAGES))
    + ["frerec_fast.kernels", "frerec_fast._cuda_src"],
    package_dir={"frerec_fast.kernels": "kernels"},
    package_data={"frerec_fast._cuda_src": ["*.cu"], "frerec_fast.engine": ["*.json"],
                  **{p: ["*.png", "*.csv", "*.json", "*.safetensors", "*.md"] for p in DATA_PACKAGES}},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "Pillow", "safetensors"],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "scikit-image", "scipy", "pybind11",
                "scikit-learn", "hypothesis", "atheris", "psutil"],
        "medical": ["pydicom", "nibabel"],
        "progress": ["tqdm"],
        "plot": ["matplotlib"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        # The OpenVINO RHM engine (CPU inference); NNCF only for its optional int8 mode.
        "openvino": ["openvino", "nncf>=3.4"],
        "triton": ["triton"],
        "ray": ["ray"],
        # FAISS, for benchmarks/ann_compare.py (the prefilter's candidate stage against
        # IVF / HNSW / PQ; docs/retrieval_scale.md). The index never needs it.
        "faiss": ["faiss-cpu"],
        # frerec eval; torchvision (AutoAugment, Mix-up, resnet18) is left out on purpose:
        # an unpinned one drags in a newer torch. Install the one matching your torch
        # (torch 2.N <-> torchvision 0.(N+15)), as scripts/install.sh does.
        "eval": ["scikit-learn", "scipy", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["frerec=frerec_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
