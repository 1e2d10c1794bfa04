"""Test helpers for plugin authors: one line per cell in a pytest suite.

    # tests/test_my_cells.py of a plugin package
    from seqengine.testing import cell_test

    test_my_cells = cell_test("ugrnn", "indrnn")     # one parametrized test, one case per cell

or, one test function per cell::

    from seqengine.testing import check_cell

    def test_ugrnn():
        check_cell("ugrnn")

`check_cell` asserts what every cell must satisfy, on tiny random problems:

1. the cell is registered (or, given a `seqengine.Cell`, parses);
2. every gradient (x, each initial state, each parameter) matches float64 central
   finite differences (`seqengine check`);
3. float32 kernels agree with float64 (outputs, final states and all gradients);
4. inference (no tape, two state slots) gives the numbers of a training forward;
5. variable lengths: a sequence shorter than T gives the outputs and final state of
   running it alone, and its padding gets zero gradients;
6. the default initialisation (`Cell.init`) gives finite outputs and gradients.

pytest is imported only by `cell_test`; `check_cell` raises a plain `AssertionError`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import functional
from .cell import Cell
from .gradcheck import check_gradients
from .plugins import get_cell

__all__ = ["check_cell", "cell_test", "CellCheckError"]


class CellCheckError(AssertionError):
    """A cell that fails one of `check_cell`'s checks (the message names the check and the quantity)."""


def _fail(cell: Cell, check: str, message: str):
    raise CellCheckError(f"cell {cell.name!r} fails the {check} check: {message}")


def _compare(cell: Cell, check: str, what: str, actual, expected, rtol: float, atol: float):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        _fail(cell, check, f"{what}: shape {actual.shape} != {expected.shape}")
    if not np.all(np.isfinite(actual)) or not np.all(np.isfinite(expected)):
        _fail(cell, check, f"{what}: non-finite values")
    err = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    if np.any(err > 0):
        k = np.unravel_index(int(np.argmax(err)), err.shape)
        _fail(cell, check, f"{what}: {actual[k]:.9g} != {expected[k]:.9g} at index {tuple(int(i) for i in k)} "
                           f"(rtol={rtol}, atol={atol})")


def _problem(cell: Cell, input_size: int, hidden_size: int, steps: int, batch: int, seed: int, scale: float):
    rng = np.random.default_rng(seed)
    shapes = functional.param_shapes(cell, input_size, hidden_size)
    # cast through float32 so the float32 and float64 runs see the very same numbers
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    params = {p: f32(rng.uniform(-scale, scale, s)) for p, s in shapes.items()}
    x = f32(rng.standard_normal((steps, batch, input_size)))
    state0 = {s: f32(rng.uniform(-scale, scale, (batch, hidden_size))) for s in cell.state}
    dy = f32(rng.standard_normal((steps, batch, hidden_size)))
    dfinal = {s: f32(rng.standard_normal((batch, hidden_size))) for s in cell.state}
    return params, x, state0, dy, dfinal


def _run(cell, params, x, state0, dy, dfinal, dtype, lengths=None):
    c = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    params = {k: c(v) for k, v in params.items()}
    y, final, tape = functional.forward(cell, params, c(x), {k: c(v) for k, v in state0.items()}, True,
                                        lengths=lengths)
    y = y.copy()
    final = {k: v.copy() for k, v in final.items()}
    dx, dstate0, grads = functional.backward(cell, params, tape, c(dy), {k: c(v) for k, v in dfinal.items()})
    return {"y": y, **{f"final {k}": v for k, v in final.items()}, "dx": dx,
            **{f"dstate0 {k}": v for k, v in dstate0.items()}, **{f"grad {k}": v for k, v in grads.items()}}


def check_cell(cell: str | Cell, *, input_size: int = 3, hidden_size: int = 4, steps: int = 4, batch: int = 3,
               seed: int = 0, tolerance: float = 1e-6, float32_rtol: float = 2e-4, float32_atol: float = 2e-4,
               scale: float = 0.5) -> None:
    """Assert that `cell` (a registered name or a `seqengine.Cell`) passes every check listed in this
    module's docstring; raise `CellCheckError` naming the first check and quantity that fails.

    The problems are tiny (D=3, H=4, T=4, B=3 by default), so the checks run in well under a second once the
    kernels are compiled (Numba caches them on disk: ``$SEQENGINE_CACHE_DIR``). `scale` bounds the random
    parameters and states of checks 3-5; the gradient check draws its own in [-0.8, 0.8].
    """
    cell = get_cell(cell)   # 1: registered, or a declaration that parses (raises SpecError otherwise)

    # 2: finite differences, float64
    result = check_gradients(cell, input_size=input_size, hidden_size=hidden_size, steps=steps, batch=batch,
                             seed=seed, tolerance=tolerance)
    if not result.ok:
        _fail(cell, "gradient", "\n" + result.report())

    # 3: float32 against float64 on the same numbers
    problem = _problem(cell, input_size, hidden_size, steps, batch, seed + 1, scale)
    r64 = _run(cell, *problem, np.float64)
    r32 = _run(cell, *problem, np.float32)
    for what, ref in r64.items():
        if r32[what].dtype != np.float32:
            _fail(cell, "float32", f"{what} is {r32[what].dtype}, not float32")
        _compare(cell, "float32", what, r32[what], ref, float32_rtol, float32_atol)

    # 4: inference forward == training forward (odd and even T: the final state's slot alternates)
    params, x, state0, dy, dfinal = problem
    for T in sorted({1, 2, steps}):
        y_t, f_t, _ = functional.forward(cell, params, x[:T], state0, training=True)
        y_i, f_i, _ = functional.forward(cell, params, x[:T], state0, training=False)
        _compare(cell, "inference", f"y (T={T})", y_i, y_t, 0, 1e-12)
        for s in cell.state:
            _compare(cell, "inference", f"final {s} (T={T})", f_i[s], f_t[s], 0, 1e-12)

    # 5: variable lengths: row 0 shorter than T behaves as if it ran alone, and its padding is ignored
    if steps > 1:
        lengths = np.full(batch, steps, np.int64)
        lengths[0] = steps - 1
        padded = _run(cell, *problem, np.float64, lengths=lengths)
        alone = _run(cell, {k: v for k, v in params.items()}, x[:steps - 1, :1],
                     {k: v[:1] for k, v in state0.items()}, dy[:steps - 1, :1], {k: v[:1] for k, v in dfinal.items()},
                     np.float64)
        _compare(cell, "lengths", "y of the short row", padded["y"][:steps - 1, :1], alone["y"], 1e-10, 1e-12)
        _compare(cell, "lengths", "y past the length", padded["y"][steps - 1:, :1], 0 * alone["y"][:1], 0, 0)
        _compare(cell, "lengths", "dx of the short row", padded["dx"][:steps - 1, :1], alone["dx"], 1e-10, 1e-12)
        _compare(cell, "lengths", "dx past the length", padded["dx"][steps - 1:, :1], 0 * alone["dx"][:1], 0, 0)
        for s in cell.state:
            _compare(cell, "lengths", f"final {s} of the short row", padded[f"final {s}"][:1], alone[f"final {s}"],
                     1e-10, 1e-12)

    # 6: the default initialisation gives finite numbers (float32, a longer sequence)
    rng = np.random.default_rng(seed)
    init = functional.init_params(cell, input_size, hidden_size, np.float32, rng)
    x32 = rng.standard_normal((3 * steps, batch, input_size)).astype(np.float32)
    zeros = {s: np.zeros((batch, hidden_size), np.float32) for s in cell.state}
    out = _run(cell, init, x32, zeros, np.ones((3 * steps, batch, hidden_size), np.float32), zeros, np.float32)
    for what, a in out.items():
        if not np.all(np.isfinite(a)):
            _fail(cell, "initialisation", f"{what} has non-finite values with the default init "
                                          f"(Cell.init: {dict(cell.init) or 'PyTorch default'})")


def cell_test(*cells: str | Cell, **options) -> Callable:
    """A pytest test function running `check_cell` once per cell (one parametrized case each).

    Assign it to a module-level name starting with ``test``::

        test_cells = cell_test("ugrnn", "indrnn")
    """
    import pytest

    if not cells:
        raise ValueError("cell_test() needs at least one cell name or seqengine.Cell")
    ids = [c if isinstance(c, str) else c.name for c in cells]

    @pytest.mark.parametrize("cell", cells, ids=ids)
    def test_cell(cell):
        check_cell(cell, **options)

    test_cell.__doc__ = f"seqengine.testing.check_cell for {', '.join(ids)}"
    return test_cell
