"""The CPU runtime (backends/cpu/runtime.py, tiles.py) in whole LSTM training steps, against a NumPy float64
LSTM written here.

- Weight packing: the forward's panels of the in-loop weights are not kept on the tape (backward packs its
  own layout; the forward's block goes back to the buffer pool for it), and steps run back to back, with
  pooled blocks handed from forward to backward, stay exact.
- Padding: a step past a sequence's length computes nothing, and its padding branch zeroes every saved
  value there (compiler/kernelplan.py, `forward_padding_lines`): the tape holds no leftover of its
  buffers (check_finite scans it; a NaN left in a reused buffer made it report a NaN that the step
  never computed).
- Compiling: the kernels' vectorized loops interleave VECTOR_INTERLEAVE vectors, and only theirs
  (checked against the assembly of the same loop compiled without the option)."""

import numpy as np

import seqengine as se

from seqengine import functional
from seqengine.backends.cpu import runtime, tiles, workspace
from seqengine.plugins import get_cell


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _lstm_reference(p, x, h0, c0, dy):
    """y, dx, grads of sum(y * dy) for torch's LSTM (gates i, f, g, o; two biases per gate), float64."""
    T, B, _ = x.shape
    gates = "ifgo"
    h, c, cache = h0, c0, []
    ys = []
    for t in range(T):
        a = {k: x[t] @ p[f"W_{k}"].T + p[f"b_i{k}"] + h @ p[f"U_{k}"].T + p[f"b_h{k}"] for k in gates}
        i, f, g, o = _sigmoid(a["i"]), _sigmoid(a["f"]), np.tanh(a["g"]), _sigmoid(a["o"])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        cache.append((h, c, i, f, g, o, c_new))
        h, c = h_new, c_new
        ys.append(h)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dx = np.zeros_like(x)
    dh, dc = np.zeros_like(h0), np.zeros_like(c0)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, c_new = cache[t]
        dh = dh + dy[t]
        tc = np.tanh(c_new)
        dc = dc + dh * o * (1 - tc ** 2)
        da = {"i": dc * g * i * (1 - i), "f": dc * c_prev * f * (1 - f), "g": dc * i * (1 - g ** 2),
              "o": dh * tc * o * (1 - o)}
        dh = np.zeros_like(dh)
        for k in gates:
            grads[f"W_{k}"] += da[k].T @ x[t]
            grads[f"U_{k}"] += da[k].T @ h_prev
            grads[f"b_i{k}"] += da[k].sum(0)
            grads[f"b_h{k}"] += da[k].sum(0)
            dx[t] += da[k] @ p[f"W_{k}"]
            dh += da[k] @ p[f"U_{k}"]
        dc = dc * f
    return np.stack(ys), dx, grads


def test_lstm_step_with_packed_weights_matches_numpy():
    cell = get_cell("lstm")
    NR = tiles.panel_width(8)
    T, B, D, H = 2 * runtime.PACK_MIN_STEPS + 1, 5, 2 * NR + 3, 2 * NR       # packed panels, a column tail in W
    rng = np.random.default_rng(7)
    params = functional.init_params(cell, D, H, np.float64, rng)
    x = rng.standard_normal((T, B, D))
    state0 = {s: rng.uniform(-0.5, 0.5, (B, H)) for s in cell.state}
    dy = rng.standard_normal((T, B, H))
    dfinal = {s: np.zeros((B, H)) for s in cell.state}
    y_ref, dx_ref, g_ref = _lstm_reference(params, x, state0["h"], state0["c"], dy)
    for _ in range(3):                                   # back to back: pooled blocks reused between steps
        y, final, tape = functional.forward(cell, params, x, state0, training=True)
        assert not [k for k in tape.arrays if k.startswith("weight_p_")]
        dx, dstate0, grads = functional.backward(cell, params, tape, dy, dfinal)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
        for k, g in g_ref.items():
            np.testing.assert_allclose(grads[k], g, rtol=1e-10, atol=1e-10, err_msg=k)


def test_padding_leaves_no_buffer_contents_on_the_tape(monkeypatch):
    """Buffers handed out full of NaN (as a reused pool block may be): with variable lengths, every saved
    value and state on the tape is finite, check_finite passes, and the results match NumPy run on each
    sequence's own steps."""
    def nan_empty(shape, dtype):
        a = np.empty(shape, dtype)
        a.fill(np.nan)
        return a
    monkeypatch.setattr(workspace, "empty", nan_empty)
    cell = get_cell("lstm")
    T, B, D, H = runtime.PACK_MIN_STEPS + 2, 3, 4, 5
    rng = np.random.default_rng(5)
    params = functional.init_params(cell, D, H, np.float64, rng)
    x = rng.standard_normal((T, B, D))
    state0 = {s: rng.uniform(-0.5, 0.5, (B, H)) for s in cell.state}
    lengths = np.array([T, 2, T - 1])
    y, final, tape = functional.forward(cell, params, x, state0, training=True, lengths=lengths)
    for name, a in tape.arrays.items():
        if name.startswith(("saved_", "state_")):
            assert np.isfinite(a).all(), name
    for b, n in enumerate(lengths):
        y_ref, _, _ = _lstm_reference(params, x[:n, b:b + 1], state0["h"][b:b + 1], state0["c"][b:b + 1],
                                      np.zeros((n, 1, H)))
        np.testing.assert_allclose(y[:n, b], y_ref[:, 0], rtol=1e-12, atol=1e-12)
        assert not y[n:, b].any()
        np.testing.assert_allclose(final["h"][b], y_ref[-1, 0], rtol=1e-12, atol=1e-12)
    rnn = se.RNN("lstm", D, H, dtype=np.float64, check_finite=True)
    for k in rnn.params:
        rnn.params[k][...] = params[k]
    y2, _ = rnn.forward(x, {s: v[None] for s, v in state0.items()}, lengths=lengths)   # no NonFiniteError
    np.testing.assert_array_equal(y2, y)
    rnn.backward(np.ones_like(y2))


def test_kernels_compile_interleaved_and_nothing_else_does(monkeypatch):
    """emit.compile_interleaved: a kernel module's functions compile with LLVM's vectorizer interleaving
    VECTOR_INTERLEAVE vectors (a process-wide option, set only during their compiles), and a function
    compiled afterwards gets LLVM's own choice again: the same code as before. (3 vectors here: a count
    LLVM's cost model, which picks powers of 2, never chooses itself.)"""
    import types

    from numba import njit

    from seqengine.backends.cpu import emit

    def loop():
        @njit(fastmath=True)
        def scale(a, out):
            for j in range(a.shape[0]):
                out[j] = a[j] * np.float32(3.0) + np.float32(1.0)
        return scale

    def assembly(fn):
        out = np.zeros(67, np.float32)
        fn(np.ones(67, np.float32), out)
        assert (out == 4.0).all()
        return [ln.split()[0] for ln in fn.inspect_asm(fn.signatures[0]).splitlines()     # its instructions
                if ln.startswith("\t") and not ln.startswith("\t.")]

    monkeypatch.setattr(emit, "VECTOR_INTERLEAVE", 3)
    before = assembly(loop())
    module = types.ModuleType("interleaved_probe")
    module.scale = loop()
    module.scale.__module__ = module.__name__
    emit.compile_interleaved(module)
    interleaved = assembly(module.scale)
    after = assembly(loop())
    assert after == before
    assert interleaved != before
