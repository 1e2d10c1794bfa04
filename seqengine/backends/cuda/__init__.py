"""The CUDA backend: generated Numba CUDA kernels (`emit`), cached on disk, driven by `runtime`.

Needs NVIDIA's ``numba-cuda`` package (``pip install "seqengine[cuda]"``) and, to run, a GPU
with its driver. Importing this package does not touch the GPU or ``numba.cuda``;
`compile_cell` checks both and raises `CudaUnavailableError` naming what is missing.
Tests run the same kernels under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ...cell import Cell
from ...compiler.cache import load_generated_module
from ...compiler.parse import parse_cell
from ...compiler.schedule import schedule
from .config import DEFAULT_LAUNCH, LaunchConfig
from .emit import emit_module

__all__ = ["CudaUnavailableError", "LaunchConfig", "compile_cell", "kernel_source", "generated_module",
           "require_cuda"]


class CudaUnavailableError(RuntimeError):
    """backend="cuda" was asked for, but the CUDA toolchain, driver or GPU is missing."""


def require_cuda() -> None:
    """Raise `CudaUnavailableError` unless kernels can run here (a GPU, or the CUDA simulator)."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise CudaUnavailableError(
            "backend='cuda' needs NVIDIA's numba-cuda package, which is not installed: "
            "pip install 'seqengine[cuda]' (pulls numba-cuda[cu12])")
    from numba import cuda
    if cuda.is_available():   # also True under NUMBA_ENABLE_CUDASIM=1
        return
    try:
        cuda.current_context()
        reason = "no CUDA device was found"
    except Exception as e:   # the driver's own words: library not found, no device, version too old
        reason = " ".join(str(e).split()) or type(e).__name__
    raise CudaUnavailableError(
        f"backend='cuda' needs an NVIDIA GPU and its driver; here: {reason}. "
        "Use backend='cpu', or NUMBA_ENABLE_CUDASIM=1 to run the kernels in the (slow) simulator.")


def kernel_source(cell: Cell, dtype="float32") -> str:
    """The generated Numba CUDA source of `cell`'s kernels (needs no GPU)."""
    sched = schedule(parse_cell(cell))
    return emit_module(sched, np.dtype(dtype).name, doc=_doc(cell))[0]


def _doc(cell: Cell) -> str:
    lines = [f"state: {list(cell.state)}, output: {cell.output_name}", "", "Equations:"]
    lines += ["    " + ln for ln in cell.equations.splitlines()]
    return "\n".join(lines)


def generated_module(cell: Cell, dtype="float32"):
    """(schedule, module) of `cell`'s CUDA kernels; importing it needs numba-cuda, not a GPU."""
    dtype = np.dtype(dtype).name
    sched = schedule(parse_cell(cell))
    source, _ = emit_module(sched, dtype, doc=_doc(cell))
    return sched, load_generated_module(f"{cell.name}_{dtype}_cuda", source)


_compiled: dict[tuple, object] = {}   # (name, equations hash, dtype) [, LaunchConfig] -> CudaKernels


def compile_cell(cell: Cell, dtype="float32", launch: LaunchConfig | None = None):
    """The CUDA kernels of `cell` for `dtype` (a `CudaKernels`, same interface as `CpuKernels`).

    Kernels are generated once per process and compiled by Numba on first launch (cached on disk).
    `launch` sets the threads per block; it changes no generated code.
    """
    require_cuda()
    from .runtime import CudaKernels
    dtype = np.dtype(dtype).name
    key = (cell.name, cell.equations_hash(), dtype)
    if key not in _compiled:
        sched, module = generated_module(cell, dtype)
        _compiled[key] = CudaKernels(sched, module, np.dtype(dtype), DEFAULT_LAUNCH)
    kernels = _compiled[key]
    if launch is None or launch == kernels.launch:
        return kernels
    # kept per launch config too: a CudaKernels holds per-shape state (occupancy answers, lengths)
    if (key, launch) not in _compiled:
        _compiled[key, launch] = kernels.with_launch(launch)
    return _compiled[key, launch]
