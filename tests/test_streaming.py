"""Streaming inference: `RNN.step` allocates only its outputs, and reused scratch never leaks between shapes."""

import tracemalloc

import numpy as np

import seqengine as se


def _stepped(rnn, x, state=None):
    ys = []
    for t in range(x.shape[0]):
        y, state = rnn.step(x[t], state)
        ys.append(y)
    return np.stack(ys), state


def test_step_allocates_only_about_its_outputs():
    rnn = se.RNN("lstm", 16, 64, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float32)
    _, state = _stepped(rnn, x[:3])                      # warm-up: kernels compiled, scratch allocated
    weights = sum(p.nbytes for p in rnn.params.values())
    tracemalloc.start()
    try:
        peaks = []
        for t in range(3, 8):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            y, state = rnn.step(x[t], state)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    outputs = y.nbytes + sum(v.nbytes for v in state.values())   # 5 KiB here; the weights are ~100 KiB
    assert max(peaks) < 5 * outputs + 8192 < weights / 2, (peaks, outputs, weights)


def test_reused_scratch_gives_the_numbers_of_forward_across_batch_sizes():
    rnn = se.RNN("gru_cho", 5, 7, num_layers=2, seed=1).eval()
    rng = np.random.default_rng(1)
    for batch in (4, 2, 4, 1):
        x = rng.standard_normal((6, batch, 5)).astype(np.float32)
        y_full, final_full = rnn.forward(x)
        y_step, final_step = _stepped(rnn, x)
        np.testing.assert_allclose(y_step, y_full, rtol=1e-5, atol=1e-6)
        for s in final_full:
            np.testing.assert_allclose(final_step[s], final_full[s], rtol=1e-5, atol=1e-6)


def test_inference_outputs_are_not_overwritten_by_the_next_call():
    rnn = se.RNN("lstm", 3, 4, seed=2).eval()
    rng = np.random.default_rng(2)
    x1, x2 = (rng.standard_normal((5, 2, 3)).astype(np.float32) for _ in range(2))
    y1, s1 = rnn.forward(x1)
    kept = (y1.copy(), {k: v.copy() for k, v in s1.items()})
    rnn.forward(x2)                                      # same shapes: the scratch is reused
    np.testing.assert_array_equal(y1, kept[0])
    for k in s1:
        np.testing.assert_array_equal(s1[k], kept[1][k])
