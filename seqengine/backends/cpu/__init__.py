"""The CPU backend: generated Numba kernels (`emit`), cached on disk, driven by `runtime`."""

from __future__ import annotations

import numpy as np

from ...cell import Cell
from ...compiler.cache import load_generated_module
from ...compiler.parse import parse_cell
from ...compiler.schedule import schedule
from .emit import compile_interleaved, emit_module, raise_vectorizer_limits
from .runtime import CpuKernels


raise_vectorizer_limits()


def kernel_source(cell: Cell, dtype="float32") -> str:
    """The generated Numba source of `cell`'s kernels (what ``seqengine kernel`` prints)."""
    sched = schedule(parse_cell(cell), recompute=True)
    return emit_module(sched, np.dtype(dtype).name, doc=_doc(cell))[0]


def _doc(cell: Cell) -> str:
    lines = [f"state: {list(cell.state)}, output: {cell.output_name}", "", "Equations:"]
    lines += ["    " + ln for ln in cell.equations.splitlines()]
    return "\n".join(lines)


_compiled: dict[tuple[str, str, str], CpuKernels] = {}   # (name, equations hash, dtype) -> kernels


def compile_cell(cell: Cell, dtype="float32") -> CpuKernels:
    """The kernels of `cell` for `dtype`, generated once per process (and compiled once per machine)."""
    dtype = np.dtype(dtype).name
    key = (cell.name, cell.equations_hash(), dtype)
    if key not in _compiled:
        sched = schedule(parse_cell(cell), recompute=True)
        source, _ = emit_module(sched, dtype, doc=_doc(cell))
        module = load_generated_module(f"{cell.name}_{dtype}_cpu", source)
        compile_interleaved(module)
        _compiled[key] = CpuKernels(sched, module, np.dtype(dtype))
    return _compiled[key]
