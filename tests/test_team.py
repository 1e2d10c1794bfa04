"""Inference with hidden units split over a team of threads (backends/cpu/team.py, forward_infer_team).

For batches too small to split (fewer than runtime.TEAM_MAX_ROWS_PER_THREAD rows per thread) the
members of one parallel region each own whole panels of hidden units and meet after every segment
of a step. Its outputs and final states must equal the training-mode forward (row-split kernels,
checked against torch and finite differences elsewhere), for every built-in cell, with variable
lengths, in float32 and float64. A team whose members cannot all run at once must give up, warn
and leave the row-split result.
"""

import numba
import numpy as np
import pytest
from numba import njit, prange

from seqengine import functional
from seqengine.backends.cpu import runtime, team, tiles
from seqengine.plugins import get_cell

CELLS = ["lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"]
T, D = 20, 6   # T >= runtime.TEAM_MIN_STEPS


@pytest.fixture
def team_launches(monkeypatch):
    """Counts the windows a team ran to the end (so a test knows the team path was taken)."""
    count = {"done": 0}
    launch = runtime.CpuKernels._launch_team

    def counting(self, *args):
        ok = launch(self, *args)
        count["done"] += ok
        return ok
    monkeypatch.setattr(runtime.CpuKernels, "_launch_team", counting)
    return count


def _problem(cell, B, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = functional.init_params(cell, D, H, dtype, rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state0 = {s: rng.uniform(-0.5, 0.5, (B, H)).astype(dtype) for s in cell.state}
    return params, x, state0


needs_two_threads = pytest.mark.skipif(numba.get_num_threads() < 2 or team.cores() < 2 or not team.usable(),
                                       reason="a team needs two threads, sched_yield and the omp/workqueue layer")


@needs_two_threads
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_team_inference_equals_the_row_split_forward(name, dtype, tol, team_launches):
    cell = get_cell(name)
    H = 3 * tiles.panel_width(np.dtype(dtype).itemsize)          # 3 panels: members own 1 and 2
    for B, lengths in [(1, None), (3, np.array([T, 5, 17]))]:
        params, x, state0 = _problem(cell, B, H, dtype)
        assert runtime._team_units(False, T, B, H, tiles.panel_width(np.dtype(dtype).itemsize), 0) is not None
        before = team_launches["done"]
        y, final, _ = functional.forward(cell, params, x, state0, training=False, lengths=lengths)
        assert team_launches["done"] == before + 1
        y_ref, final_ref, _ = functional.forward(cell, params, x, state0, training=True, lengths=lengths)
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
        for s in cell.state:
            np.testing.assert_allclose(final[s], final_ref[s], rtol=tol, atol=tol)


def test_no_team_where_rows_split_well_or_units_do_not_fill_panels(monkeypatch):
    monkeypatch.setattr(team, "usable", lambda: True)
    monkeypatch.setattr(team, "cores", lambda: 2)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    nr, big = tiles.panel_width(4), runtime.TEAM_TRAIN_MIN_WEIGHT_BYTES
    assert list(runtime._team_units(False, T, 1, 4 * nr, nr, 0)) == [0, 2 * nr, 4 * nr]
    assert list(runtime._team_units(False, T, 1, 3 * nr, nr, 0)) == [0, nr, 3 * nr]   # whole panels
    assert runtime._team_units(False, runtime.TEAM_MIN_STEPS - 1, 1, 4 * nr, nr, 0) is None
    assert runtime._team_units(False, T, 4, 4 * nr, nr, 0) is None               # 2 rows per thread: rows
    assert runtime._team_units(False, T, 1, 4 * nr + 1, nr, 0) is None           # not whole panels
    assert runtime._team_units(False, T, 1, nr, nr, 0) is None                   # one panel: one member
    assert runtime._team_units(True, T, 16, 4 * nr, nr, big) is not None         # training: 8 rows a thread
    assert runtime._team_units(True, T, 18, 4 * nr, nr, big) is None             # 9 rows a thread
    assert runtime._team_units(True, T, 16, 4 * nr, nr, big - 1) is None         # weights that fit the caches
    assert runtime._team_units(False, T, 16, 4 * nr, nr, big) is not None        # inference too
    assert runtime._team_units(False, T, 16, 4 * nr, nr, big - 1) is None


@needs_two_threads
def test_a_team_that_cannot_meet_gives_up_and_the_rows_kernel_answers(monkeypatch, team_launches):
    """One thread for two members: the first waits for the second, which cannot start until the first
    returns. With a short limit the member gives up, the runtime restores the window's start states,
    warns once, runs the row-split kernel, and splits rows from then on."""
    cell = get_cell("gru_cho")                                   # two segments: two meetings a step
    H = 2 * tiles.panel_width(8)
    params, x, state0 = _problem(cell, 1, H, np.float64)
    y_ref, final_ref, _ = functional.forward(cell, params, x, state0, training=True)
    monkeypatch.setattr(team, "LIMIT", 10)
    monkeypatch.setattr(team, "_gave_up", False)
    n_threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        monkeypatch.setattr(runtime, "_team_units", lambda *a: np.array([0, H // 2, H], np.int64))
        with pytest.warns(RuntimeWarning, match="splits batch rows from now on"):
            y, final, _ = functional.forward(cell, params, x, state0, training=False)
    finally:
        numba.set_num_threads(n_threads)
    assert team_launches["done"] == 0 and not team.usable()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final["h"], final_ref["h"], rtol=1e-12, atol=1e-12)


@njit(cache=True)
def _relay_member(m, n, sync, out, steps, limit):
    for t in range(steps):
        out[m, t] = out[1 - m, t - 1] + 1 if t > 0 else 0    # the partner's value of the step before
        if not team.barrier(sync, n, t + 1, limit):
            return


@njit(parallel=True, cache=True)
def _relay(sync, out, steps, limit):
    for m in prange(2):
        _relay_member(m, 2, sync, out, steps, limit)


@needs_two_threads
def test_barrier_orders_every_step():
    """Each member reads what the other wrote one meeting earlier: any missed wait breaks the count."""
    steps = 5000
    out = np.full((2, steps), -7, np.int64)
    sync = team.new_sync()
    _relay(sync, out, steps, team.DEFAULT_LIMIT)
    assert sync[team.ARRIVED] == 2 * steps and sync[team.ABORTED] == 0
    np.testing.assert_array_equal(out, np.tile(np.arange(steps), (2, 1)))


@needs_two_threads
@pytest.mark.parametrize("name", CELLS)
def test_team_training_step_equals_the_row_split_step(name, monkeypatch, team_launches):
    """Training with few rows per thread and big weights splits units in forward and backward: every
    output, state, input and parameter gradient equals the row-split step (float64), with variable
    lengths and windows of steps (the team carries state adjoints from window to window)."""
    cell = get_cell(name)
    H, B = 2 * tiles.panel_width(8), 3
    rng = np.random.default_rng(3)
    params, x, state0 = _problem(cell, B, H, np.float64)
    lengths = np.array([T, 7, 16])
    dy = rng.standard_normal((T, B, H))
    dfinal = {s: rng.standard_normal((B, H)) for s in cell.state}
    monkeypatch.setattr(runtime, "WINDOW_MIN_REUSE", 0)
    monkeypatch.setattr(runtime, "WINDOW_BYTES", 5 * B * 3 * H * 8)        # windows of a few steps

    def step():
        y, final, tape = functional.forward(cell, params, x, state0, training=True, lengths=lengths)
        dx, dstate0, grads = functional.backward(cell, params, tape, dy, dfinal)
        out = {"y": y, "dx": dx, **{f"final.{s}": v for s, v in final.items()},
               **{f"dstate0.{s}": v for s, v in dstate0.items()}, **{f"grad.{p}": g for p, g in grads.items()}}
        return {k: np.array(v, copy=True) for k, v in out.items()}

    monkeypatch.setattr(runtime, "TEAM_TRAIN_MIN_WEIGHT_BYTES", 0)
    assert runtime._team_units(True, T, B, H, tiles.panel_width(8), 0) is not None
    teamed = step()
    assert team_launches["done"] >= 4                                # two windows or more, both ways
    monkeypatch.setattr(runtime, "TEAM_MIN_STEPS", T + 1)
    rows = step()
    for k in rows:
        np.testing.assert_allclose(teamed[k], rows[k], rtol=1e-12, atol=1e-12, err_msg=k)
