"""Builds the optional C++/OpenMP extension vgpo_fast._C from csrc/; metadata lives in pyproject.toml.

The extension is optional: when it cannot be built (no compiler, VGPO_FAST_NO_EXT=1) the package installs
without it and the ops fall back to the reference implementation on CPU tensors.
"""

import glob
import os
import platform

from setuptools import setup

PACKAGE_DIR = {
    "vgpo_fast": "vgpo_fast",
    "vgpo_fast.kernels": "kernels",
    "vgpo_fast.profiling": "profiling",
    "vgpo_fast.experiments": "experiments",
}


def _packages() -> list[str]:
    found = ["vgpo_fast.kernels", "vgpo_fast.profiling", "vgpo_fast.experiments"]
    for root, _dirs, files in os.walk("vgpo_fast"):
        if "__init__.py" in files:
            found.append(root.replace(os.sep, "."))
    return sorted(found)


def _extensions() -> tuple[list, dict]:
    if os.environ.get("VGPO_FAST_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    # Built where it runs (pip install from source); set VGPO_FAST_PORTABLE=1 for a wheel that travels.
    if os.environ.get("VGPO_FAST_PORTABLE") != "1" and platform.machine() in ("x86_64", "AMD64"):
        cxx.append("-march=native")
    ext = CppExtension(
        "vgpo_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    ext.optional = True
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(packages=_packages(), package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
