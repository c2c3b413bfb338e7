"""Builds recis and its C++ extension recis._C (CPU always; CUDA sources only with a CUDA toolkit)."""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cc"), recursive=True)) + ["csrc/bind.cpp"]
    cuda = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    march = os.environ.get("RECIS_MARCH", "native")
    # No multiply-add contraction: with it, results would depend on -march and on where the
    # compiler fuses; without it, the CPU kernels equal the GPU (Triton) kernels bit for bit.
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-fno-math-errno", "-ffp-contract=off", "-Wno-unused-parameter"]
    if march:
        cxx.append(f"-march={march}")
    kwargs = dict(
        name="recis._C",
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    use_cuda = bool(cuda) and CUDA_HOME is not None and torch.version.cuda is not None
    if use_cuda:
        return CUDAExtension(sources=cpp + cuda, extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, **kwargs)
    return CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    name="recis",
    version="0.1.0",
    description="Sparse-dense training of recommendation and relevance models on PyTorch",
    packages=find_packages(include=["recis", "recis.*"]),
    python_requires=">=3.10",
    # The Makefile registers the checkout with RECIS_NO_EXT=1 and builds the extension in place
    # (incrementally) right after; a plain `pip install .` builds it here.
    ext_modules=[] if os.environ.get("RECIS_NO_EXT") else [extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["recis = recis.cli:main"]},
    zip_safe=False,
)
