"""Helpers of the seqengine test suite (imported as `from _seqengine_testing import ...`).

A module with a unique name: `from conftest import ...` is ambiguous once another
test folder (tests/cuda) has its own conftest.py.
"""

from __future__ import annotations

import numpy as np

import seqengine as se
from seqengine import functional

# a small corpus for the character-level training tests (test_train, test_mpi)
CORPUS_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 20

# the cells in the registry at collection time: every test parametrized over
# `registered_cell` runs for any cell a plugin adds later
REGISTERED = sorted(se.cells())
BUILTIN = sorted(c for c in REGISTERED if se.plugins.registry().owner[c] in {"lstm", "gru", "rnn"})


def make_problem(cell, input_size=3, hidden_size=4, steps=4, batch=3, seed=0, scale=0.8):
    """A random float64 problem: params (larger than the default init, so the
    nonlinearities leave their linear range), x, state0, dy, dfinal."""
    cell = se.get_cell(cell)
    rng = np.random.default_rng(seed)
    shapes = functional.param_shapes(cell, input_size, hidden_size)
    params = {p: rng.uniform(-scale, scale, s) for p, s in shapes.items()}
    x = rng.standard_normal((steps, batch, input_size))
    state0 = {s: rng.uniform(-scale, scale, (batch, hidden_size)) for s in cell.state}
    dy = rng.standard_normal((steps, batch, hidden_size))
    dfinal = {s: rng.standard_normal((batch, hidden_size)) for s in cell.state}
    return cell, params, x, state0, dy, dfinal


def cast(tree, dtype):
    """Cast an array, or a dict of arrays, to `dtype` (contiguous copies)."""
    if isinstance(tree, dict):
        return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=dtype)


def run_engine(cell, params, x, state0, dy, dfinal, dtype=np.float64):
    """seqengine's forward (training) and backward through the functional core,
    everything cast to `dtype`. Returns y, final, dx, dstate0, grads (copies)."""
    params, x, state0 = cast(params, dtype), cast(x, dtype), cast(state0, dtype)
    y, final, tape = functional.forward(cell, params, x, state0, training=True)
    y = y.copy()
    dx, dstate0, grads = functional.backward(cell, params, tape, cast(dy, dtype), cast(dfinal, dtype))
    return y, {k: v.copy() for k, v in final.items()}, dx.copy(), {k: v.copy() for k, v in dstate0.items()}, \
        {k: v.copy() for k, v in grads.items()}


def assert_close(actual, expected, rtol, atol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = atol + rtol * np.abs(expected.astype(np.float64))
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: worst |diff| {err.flat[worst]:.3e} at flat index {worst} "
                                  f"(value {expected.flat[worst]:.6g}); max |diff| {err.max():.3e}, "
                                  f"rtol={rtol}, atol={atol}")
