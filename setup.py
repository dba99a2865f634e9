"""Builds nanokern's compiled ops; package metadata lives in pyproject.toml.

Install after torch with `pip install --no-build-isolation -e .` (setup.py imports torch).
- nanokern._C       always: CPU kernels (OpenMP) and the op schemas (TORCH_LIBRARY).
- nanokern._cpu     always: the same CPU kernel bound with pybind11 on raw buffers, without
                    torch (what a CPU conversion runs: it never waits for `import torch`).
- nanokern._C_cuda  only when the installed torch has CUDA (torch.version.cuda) and
                    NANOKERN_NO_CUDA is not 1: the CUDA kernels (TORCH_LIBRARY_IMPL).
"""
import os

import pybind11
import torch
from setuptools import Extension, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

INCLUDE_DIRS = [os.path.abspath("csrc"), os.path.abspath(os.path.join("csrc", "include")), os.path.abspath(os.path.join("csrc", "cpu"))]
CXX_FLAGS = ["-O3", "-fopenmp"]


def extensions():
    exts = [
        CppExtension(
            "nanokern._C",
            ["csrc/torch_bindings.cpp", "csrc/cpu/gather_cast.cpp", "csrc/cpu/gather_cast_kernel.cpp",
             "csrc/cpu/fp8_quant.cpp", "csrc/cpu/fp8_quant_kernel.cpp"],
            include_dirs=INCLUDE_DIRS,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        ),
        Extension(
            "nanokern._cpu",
            ["csrc/cpu/host_bindings.cpp", "csrc/cpu/gather_cast_kernel.cpp", "csrc/cpu/fp8_quant_kernel.cpp"],
            include_dirs=[*INCLUDE_DIRS, pybind11.get_include()],
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-pthread"],  # std::thread, no OpenMP
            extra_link_args=["-pthread"],
            language="c++",
        ),
    ]
    if torch.version.cuda and os.environ.get("NANOKERN_NO_CUDA") != "1":
        exts.append(
            CUDAExtension(
                "nanokern._C_cuda",
                ["csrc/cuda/torch_bindings_cuda.cpp", "csrc/cuda/gather_cast.cu", "csrc/cuda/fp8_quant.cu"],
                include_dirs=INCLUDE_DIRS,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
