"""The functional core: parameters in, arrays out, no hidden state.

    y, final, tape = forward(cell, params, x, state0, training=True)
    dx, dstate0, grads = backward(cell, params, tape, dy, dfinal)

One layer, one direction. Shapes: x [T, B, D]; state0, final, dfinal,
dstate0 {s: [B, H]}; y, dy [T, B, H]; params {name: [H, in] or [H]}. The layer
API (`seqengine.RNN`) adds validation and PyTorch's leading layer axis on states;
other frameworks can wrap these two functions directly.
"""

from __future__ import annotations

import numpy as np

from .cell import Cell
from .compiler.parse import parse_cell


def param_shapes(cell: Cell, input_size: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """{name: shape}: matrices [H, D] (products with x) or [H, H]; vectors [H]."""
    g = parse_cell(cell)
    sizes = {"D": input_size, "H": hidden_size}
    return {p: (hidden_size, sizes[g.matrices[p]]) if p in g.matrices else (hidden_size,) for p in g.params}


def init_params(cell: Cell, input_size: int, hidden_size: int, dtype=np.float32,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Parameters drawn as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)), unless `cell.init` says otherwise."""
    rng = rng if rng is not None else np.random.default_rng()
    bound = 1.0 / np.sqrt(hidden_size)
    params = {}
    shapes = param_shapes(cell, input_size, hidden_size)
    stacked = _stacked_storage(cell, shapes, dtype)
    for name, shape in shapes.items():
        init = cell.init.get(name)
        if init is None:
            value = rng.uniform(-bound, bound, size=shape)
        elif callable(init):
            value = np.asarray(init(shape, rng))
            if value.shape != shape:
                raise ValueError(f"cell {cell.name!r}: init[{name!r}] returned shape {value.shape}, expected {shape}")
        else:
            value = np.full(shape, float(init))
        if name in stacked:
            stacked[name][...] = value
            params[name] = stacked[name]
        else:
            params[name] = np.ascontiguousarray(value, dtype=dtype)
    return params


def _stacked_storage(cell: Cell, shapes: dict, dtype) -> dict[str, np.ndarray]:
    """Matrices multiplied with the same operand live as row blocks (views) of one [k*H, in] array, the
    layout the kernels multiply by, so no call has to copy them together. Assigning a new array to a
    parameter is fine too: the kernels then stack a copy."""
    from .compiler.schedule import schedule
    sched = schedule(parse_cell(cell))
    views: dict[str, np.ndarray] = {}
    for grp in ([sched.x_group] if sched.x_group else []) + sched.groups:
        if len(set(grp.matrices)) != len(grp.matrices) or any(m in views for m in grp.matrices):
            continue
        H, n_in = shapes[grp.matrices[0]]
        base = np.empty((len(grp.matrices) * H, n_in), dtype)
        for k, m in enumerate(grp.matrices):
            views[m] = base[k * H:(k + 1) * H]
    return views


BACKENDS = ("cpu", "cuda")


def _kernels(cell: Cell, dtype, backend: str):
    """The backend's compiled kernels; each backend is imported only when asked for."""
    if backend == "cpu":
        from .backends.cpu import compile_cell
    elif backend == "cuda":
        from .backends.cuda import compile_cell
    else:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    return compile_cell(cell, dtype)


def forward(cell: Cell, params: dict, x: np.ndarray, state0: dict, training: bool = True, backend: str = "cpu",
            lengths: np.ndarray | None = None):
    """One layer over a sequence: y [T, B, H], final {s: [B, H]}, tape (None unless training).

    lengths [B] int64 in 1..T (None: all T): outputs past a sequence's length are zero, its final state is
    taken at its own last step and backward ignores the padding.
    """
    return _kernels(cell, x.dtype, backend).forward(params, x, state0, training, lengths)


def backward(cell: Cell, params: dict, tape, dy: np.ndarray, dfinal: dict, backend: str = "cpu"):
    """Gradients of a training forward: dx [T, B, D], dstate0 {s: [B, H]}, grads {param: array}."""
    return _kernels(cell, dy.dtype, backend).backward(params, tape, dy, dfinal)
