"""Two copies of the kernel package: compiled (`triton.jit`, CUDA tensors) and interpreted
(Triton's interpreter, CPU tensors). One source, so the CPU copy tests the GPU code."""
import importlib.util
import os
import sys
import threading
from types import ModuleType

import torch

_PKG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
_INTERP_NAME = "recis.gpu._kernels_interpreted"
_lock = threading.Lock()
_cache = {}


def _load_interpreted() -> ModuleType:
    import triton

    with triton.knobs.runtime.scope():  # restores the knob (and TRITON_INTERPRET) afterwards
        triton.knobs.runtime.interpret = True
        spec = importlib.util.spec_from_file_location(_INTERP_NAME, os.path.join(_PKG_DIR, "__init__.py"),
                                                      submodule_search_locations=[_PKG_DIR])
        module = importlib.util.module_from_spec(spec)
        sys.modules[_INTERP_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(_INTERP_NAME, None)
            raise
    return module


def flavor(device: torch.device) -> ModuleType:
    """The kernel package for tensors on `device`: interpreted on the CPU, compiled on CUDA
    (interpreted there too when TRITON_INTERPRET=1 is set)."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    with _lock:
        if kind not in _cache:
            if kind == "cuda":
                from recis.gpu import kernels as module
            else:
                module = _load_interpreted()
            _cache[kind] = module
        return _cache[kind]
