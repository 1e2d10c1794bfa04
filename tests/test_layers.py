"""Stacked, bidirectional, variable-length and streaming layers (`se.RNN`, `seqengine.layers`), every cell.

References: single-layer runs of the functional core composed by hand (numpy flips per sequence),
each sequence run alone, finite differences, and the RNN's own time-major / full-forward results.
torch parity for lstm and gru lives in test_interop.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import seqengine as se
from seqengine import functional, layers
from seqengine.gradcheck import central_differences, relative_error

from _seqengine_testing import assert_close

TIGHT = dict(rtol=1e-12, atol=1e-12)


def make_stack(cell, num_layers=2, bidirectional=True, input_size=2, hidden_size=3, seed=0, scale=0.8, **kw):
    """A float64 RNN whose params are larger than the default init (the nonlinearities leave their linear range)."""
    rnn = se.RNN(cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                 dtype=np.float64, seed=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    for name, a in rnn.params.items():
        rnn.params[name] = rng.uniform(-scale, scale, a.shape)
    return rnn


def random_state(rnn, batch, rng):
    n = rnn.num_layers * rnn.num_directions
    return {s: rng.uniform(-0.8, 0.8, (n, batch, rnn.hidden_size)) for s in rnn.state_names}


def composed_reference(rnn, x, state0, lengths):
    """Each sequence alone, layer by layer: functional.forward on x[:len] and on x[:len][::-1] (flipped back),
    directions concatenated, padded with zeros. -> y [T, B, Dn*H], final {s: [L*Dn, B, H]}."""
    T, B, _ = x.shape
    Dn, H = rnn.num_directions, rnn.hidden_size
    y = np.zeros((T, B, Dn * H))
    final = {s: np.zeros((rnn.num_layers * Dn, B, H)) for s in rnn.state_names}
    for b in range(B):
        n = int(lengths[b])
        inp = x[:n, b:b + 1]                                             # [n, 1, D]
        for k in range(rnn.num_layers):
            outs = []
            for d in range(Dn):
                p = rnn.layer_params(k, reverse=bool(d))
                st = {s: state0[s][k * Dn + d, b:b + 1] for s in rnn.state_names}
                seq = inp if d == 0 else inp[::-1].copy()
                out, fin, _ = functional.forward(rnn.cell, p, np.ascontiguousarray(seq), st, training=False)
                outs.append(out if d == 0 else out[::-1])
                for s in rnn.state_names:
                    final[s][k * Dn + d, b] = fin[s][0]
            inp = np.concatenate(outs, axis=2)
        y[:n, b] = inp[:, 0]
    return y, final


LENGTHS = np.array([3, 1, 4])   # unsorted, with a length-1 and a full-length sequence (T = 4)


# -- forward: composition of single-layer runs ---------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_matches_composed_single_layer_runs(registered_cell, bidirectional):
    rnn = make_stack(registered_cell, num_layers=2, bidirectional=bidirectional)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 2))
    x[np.arange(4)[:, None] >= LENGTHS[None, :]] = np.nan                 # padding must never be read
    state0 = random_state(rnn, 3, rng)
    for mode in ("train", "eval"):
        getattr(rnn, mode)()
        y, final = rnn.forward(x, state0, lengths=LENGTHS)
        y_ref, final_ref = composed_reference(rnn, x, state0, LENGTHS)
        assert_close(y, y_ref, what=f"{registered_cell} {mode} y", **TIGHT)
        for s in rnn.state_names:
            assert final[s].shape == (2 * rnn.num_directions, 3, 3)
            assert_close(final[s], final_ref[s], what=f"{registered_cell} {mode} final[{s}]", **TIGHT)


def test_full_length_equals_no_lengths():
    rnn = make_stack("lstm", num_layers=2, bidirectional=True)
    x = np.random.default_rng(2).standard_normal((4, 3, 2))
    y0, f0 = rnn.forward(x)
    y1, f1 = rnn.forward(x, lengths=[4, 4, 4])
    assert_close(y1, y0, what="y", **TIGHT)
    y_ref, f_ref = composed_reference(rnn, x, rnn.zero_state(3), [4, 4, 4])
    assert_close(y0, y_ref, what="y vs reference", **TIGHT)
    for s in rnn.state_names:
        assert_close(f1[s], f0[s], what=s, **TIGHT)


# -- backward: variable lengths equal each sequence run alone ------------------------------------------------
def test_varlen_equals_each_sequence_alone(registered_cell):
    rnn = make_stack(registered_cell, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(3)
    T, B = 4, 3
    x = rng.standard_normal((T, B, 2))
    state0 = random_state(rnn, B, rng)
    dy = rng.standard_normal((T, B, 6))
    dfinal = random_state(rnn, B, rng)
    y, final = rnn.forward(x, state0, lengths=LENGTHS)
    dx, dstate0 = rnn.backward(dy, dfinal)
    grads = {k: v.copy() for k, v in rnn.grads.items()}
    grad_sum = {k: np.zeros_like(v) for k, v in grads.items()}
    for b in range(B):
        n = LENGTHS[b]
        sl = lambda tree: {s: tree[s][:, b:b + 1] for s in rnn.state_names}   # noqa: E731
        y_b, final_b = rnn.forward(x[:n, b:b + 1], sl(state0))
        dx_b, dstate0_b = rnn.backward(dy[:n, b:b + 1], sl(dfinal))
        assert_close(y[:n, b:b + 1], y_b, what=f"y of sequence {b}", **TIGHT)
        assert np.all(y[n:, b] == 0), "outputs past a length must be zero"
        assert_close(dx[:n, b:b + 1], dx_b, what=f"dx of sequence {b}", **TIGHT)
        assert np.all(dx[n:, b] == 0), "dx past a length must be zero"
        for s in rnn.state_names:
            assert_close(final[s][:, b:b + 1], final_b[s], what=f"final[{s}] of {b}", **TIGHT)
            assert_close(dstate0[s][:, b:b + 1], dstate0_b[s], what=f"dstate0[{s}] of {b}", **TIGHT)
        for k in grad_sum:
            grad_sum[k] += rnn.grads[k]
    for k in grads:
        assert_close(grads[k], grad_sum[k], what=f"grad {k}", rtol=1e-11, atol=1e-12)


def test_lengths_in_any_order_permute_with_the_batch():
    rnn = make_stack("gru", num_layers=2, bidirectional=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 4, 2))
    lengths = np.array([2, 4, 1, 3])
    perm = np.array([2, 0, 3, 1])
    y, final = rnn.forward(x, lengths=lengths)
    y_p, final_p = rnn.forward(x[:, perm], lengths=lengths[perm])
    assert_close(y_p, y[:, perm], what="y", **TIGHT)
    assert_close(final_p["h"], final["h"][:, perm], what="final", **TIGHT)


# -- finite differences -----------------------------------------------------------------------------------
@pytest.fixture
def one_numba_thread():
    """Hundreds of tiny forwards: one Numba thread avoids a parallel launch per call (the results are the same)."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def test_finite_differences_stacked_bidirectional_varlen(registered_cell, one_numba_thread):
    """float64 central differences of L = sum(y*dy) + sum(final*dfinal) through 2 bidirectional layers,
    lengths [3, 1], dropout 0.3 (the forward's masks replayed), for x, every state0 and every parameter."""
    rnn = make_stack(registered_cell, num_layers=2, bidirectional=True, input_size=2, hidden_size=2,
                     dropout=0.3, seed=5)
    rng = np.random.default_rng(6)
    T, B = 3, 2
    lengths = np.array([3, 1])
    x = rng.standard_normal((T, B, 2))
    state0 = random_state(rnn, B, rng)
    dy = rng.standard_normal((T, B, 4))
    dfinal = random_state(rnn, B, rng)
    rnn.forward(x, state0, lengths=lengths)
    masks = rnn._tape.masks
    assert masks[0] is None and masks[1] is not None
    dx, dstate0 = rnn.backward(dy, dfinal)
    params = rnn._layer_params()

    def loss():
        y, final, _ = layers.forward(rnn.cell, params, x, state0, True, lengths=lengths, masks=masks)
        return float(np.sum(y * dy) + sum(np.sum(final[s] * dfinal[s]) for s in rnn.state_names))

    targets = {"x": (x, dx)}
    targets.update({f"state0.{s}": (state0[s], dstate0[s]) for s in rnn.state_names})
    targets.update({name: (rnn.params[name], rnn.grads[name]) for name in rnn.params})
    for name, (array, analytic) in targets.items():
        numeric = central_differences(array, loss, eps=1e-6)
        err = relative_error(analytic.reshape(-1), numeric)
        assert err < 1e-7, f"{registered_cell} {name}: relative error {err:.2e}"
    assert np.all(dx[1:, 1] == 0)


# -- dropout -------------------------------------------------------------------------------------------------
def test_dropout_seeded_training_only_and_composed():
    kw = dict(num_layers=3, bidirectional=True, dropout=0.5, seed=7)
    a, b = make_stack("lstm", **kw), make_stack("lstm", **kw)
    plain = make_stack("lstm", num_layers=3, bidirectional=True, seed=7)
    for name in a.params:                 # dropout draws from its own stream: the same seed, the same params
        assert np.array_equal(a.params[name], plain.params[name])
    x = np.random.default_rng(8).standard_normal((4, 3, 2))
    ya1, _ = a.forward(x)
    masks = a._tape.masks
    ya2, _ = a.forward(x)
    yb1, _ = b.forward(x)
    assert np.array_equal(ya1, yb1), "the same seed must give the same masks"
    assert not np.allclose(ya1, ya2), "each training forward draws new masks"
    assert masks[0] is None
    for m in masks[1:]:
        assert m.shape == (4, 3, 6)
        assert set(np.unique(m)) == {0.0, 2.0}       # kept entries scaled by 1/(1-p)
    # the forward equals single-layer runs composed with the masks applied between layers
    ref = make_stack("lstm", num_layers=1, bidirectional=True, seed=7)
    inp = x
    for k in range(3):
        ref_in = inp if masks[k] is None else inp * masks[k]
        ref.input_size = ref_in.shape[2]
        for d, rev in enumerate((False, True)):
            for p, arr in a.layer_params(k, rev).items():
                ref.params[ref.param_name(p, 0, rev)] = arr
        ref._shapes = {n: v.shape for n, v in ref.params.items()}
        inp, _ = ref.eval().forward(ref_in)
    assert_close(ya1, inp, what="dropout y vs composition", **TIGHT)
    # eval mode: no dropout at all
    y_eval, _ = a.eval().forward(x)
    y_plain, _ = plain.eval().forward(x)
    assert np.array_equal(y_eval, y_plain)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        se.RNN("gru", 2, 3, dropout=0.2)


# -- batch_first ----------------------------------------------------------------------------------------------
def test_batch_first_equals_time_major():
    tm = make_stack("gru", num_layers=2, bidirectional=True, seed=9)
    bf = make_stack("gru", num_layers=2, bidirectional=True, seed=9, batch_first=True)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 3, 2))
    dy = rng.standard_normal((4, 3, 6))
    y, f = tm.forward(x, lengths=LENGTHS)
    dx, ds = tm.backward(dy)
    y_bf, f_bf = bf.forward(x.transpose(1, 0, 2), lengths=LENGTHS)
    dx_bf, ds_bf = bf.backward(dy.transpose(1, 0, 2))
    assert y_bf.shape == (3, 4, 6) and dx_bf.shape == (3, 4, 2)
    assert_close(y_bf, y.transpose(1, 0, 2), what="y", **TIGHT)
    assert_close(dx_bf, dx.transpose(1, 0, 2), what="dx", **TIGHT)
    assert f_bf["h"].shape == (4, 3, 3), "states stay [layers*directions, B, H] with batch_first"
    assert_close(f_bf["h"], f["h"], what="final", **TIGHT)
    for k in tm.grads:
        assert_close(bf.grads[k], tm.grads[k], what=k, **TIGHT)


# -- streaming -------------------------------------------------------------------------------------------------
def test_step_matches_forward(registered_cell):
    rnn = make_stack(registered_cell, num_layers=2, bidirectional=False, dropout=0.5)   # train mode: ignored
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 2))
    state0 = random_state(rnn, 3, rng)
    state = state0
    ys = []
    for t in range(4):
        y_t, state = rnn.step(x[t], state)
        ys.append(y_t)
    y, final = rnn.eval().forward(x, state0)
    assert_close(np.stack(ys), y, what=f"{registered_cell} step y", **TIGHT)
    for s in rnn.state_names:
        assert_close(state[s], final[s], what=f"{registered_cell} step state {s}", **TIGHT)
    y0, _ = rnn.step(x[0])
    assert_close(y0, rnn.forward(x[:1])[0][0], what="step from zero state", **TIGHT)


def test_step_does_not_recompile(monkeypatch):
    rnn = se.RNN("lstm", 2, 3, num_layers=2, seed=0)
    x = np.random.default_rng(12).standard_normal((3, 2)).astype(np.float32)
    y, state = rnn.step(x)                                       # warm-up: kernels generated and loaded

    def no_compile(*args, **kwargs):
        raise AssertionError("step() generated kernels again")
    import seqengine.backends.cpu as cpu
    monkeypatch.setattr(cpu, "load_generated_module", no_compile)
    monkeypatch.setattr(cpu, "emit_module", no_compile)
    for _ in range(20):
        y, state = rnn.step(x, state)
    assert y.shape == (3, 3) and y.dtype == np.float32 and state["c"].shape == (2, 3, 3)


# -- parameters and the existing API ------------------------------------------------------------------------------
def test_parameter_names_and_layout():
    single = se.RNN("gru", 2, 3, seed=0)
    assert list(single.params) == list(functional.param_shapes(single.cell, 2, 3))
    ref = functional.init_params(single.cell, 2, 3, np.float32, np.random.default_rng(0))
    for k in ref:                                           # a seed gives the parameters it always gave
        assert np.array_equal(single.params[k], ref[k])
    stack = se.RNN("gru", 2, 3, num_layers=2, bidirectional=True, seed=0)
    plain = list(functional.param_shapes(stack.cell, 2, 3))
    expected = [f"{pre}.{p}" for pre in ("l0", "l0_reverse", "l1", "l1_reverse") for p in plain]
    assert list(stack.params) == expected
    assert stack.params["l0.W_r"].shape == (3, 2) and stack.params["l1_reverse.W_r"].shape == (3, 6)
    assert stack.params["l1.U_r"].shape == (3, 3) and stack.params["l1.b_ir"].shape == (3,)
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in stack.params.values())
    assert stack.layer_params(1, reverse=True)["W_r"] is stack.params["l1_reverse.W_r"]
    assert se.RNN("gru", 2, 3, num_layers=2, seed=0).param_name("W_r", 1) == "l1.W_r"


def test_grads_are_set_not_accumulated():
    rnn = make_stack("lstm", num_layers=2, bidirectional=True)
    x = np.random.default_rng(13).standard_normal((3, 2, 2))
    y, _ = rnn.forward(x)
    rnn.backward(np.ones_like(y))
    first = {k: v.copy() for k, v in rnn.grads.items()}
    rnn.backward(np.ones_like(y))
    assert list(rnn.grads) == list(rnn.params)
    for k in first:
        assert_close(rnn.grads[k], first[k], what=k, **TIGHT)


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths, match", [
    ([0, 2, 3], r"lengths must be between 1 and T=4 .*got 0 at index 0"),
    ([1, 5, 3], r"lengths must be between 1 and T=4 .*got 5 at index 1"),
    ([1, 2, -1], r"lengths must be between 1 and T=4 .*got -1 at index 2"),
    ([1, 2], r"lengths must have shape \[B=3\].*got shape \(2,\)"),
    ([[1, 2, 3]], r"lengths must have shape \[B=3\].*got shape \(1, 3\)"),
])
def test_bad_lengths_value(lengths, match):
    rnn = se.RNN("gru", 2, 3, seed=0)
    with pytest.raises(ValueError, match=match):
        rnn.forward(np.zeros((4, 3, 2)), lengths=lengths)


@pytest.mark.parametrize("lengths, match", [
    (np.array([1.0, 2.0, 3.0]), r"lengths must be an integer array of shape \[B=3\].*float64"),
    (np.array([True, True, True]), r"lengths must be an integer array of shape \[B=3\].*bool"),
    (object(), r"lengths must be an integer array of shape \[B=3\]; got object"),
])
def test_bad_lengths_type(lengths, match):
    rnn = se.RNN("gru", 2, 3, seed=0)
    with pytest.raises(TypeError, match=match):
        rnn.forward(np.zeros((4, 3, 2)), lengths=lengths)


def test_wrong_state_shape_for_the_layer_count():
    rnn = se.RNN("lstm", 2, 3, num_layers=2, bidirectional=True, seed=0)
    x = np.zeros((4, 3, 2))
    bad = {"h": np.zeros((2, 3, 3)), "c": np.zeros((4, 3, 3))}
    msg = (r"state\['h'\] must have shape \[layers\*directions=4, B, hidden_size=3\] "
           r"\(num_layers=2 \* num_directions=2\); got \(2, 3, 3\)")
    with pytest.raises(ValueError, match=msg):
        rnn.forward(x, bad)
    rnn.forward(x)
    with pytest.raises(ValueError, match=msg.replace("state", "dstate")):
        rnn.backward(None, bad)
    with pytest.raises(ValueError, match=r"state\['h'\] must have shape \[layers\*directions=1, B, "
                                         r"hidden_size=3\]; got \(2, 3, 3\)"):
        se.RNN("gru", 2, 3, seed=0).forward(x, {"h": np.zeros((2, 3, 3))})


def test_batch_first_mismatches():
    rnn = se.RNN("gru", 2, 3, batch_first=True, seed=0)
    x_time_major = np.zeros((4, 3, 2))                    # the user forgot batch_first: read as B=4, T=3
    with pytest.raises(ValueError, match=r"lengths must have shape \[B=4\].*got shape \(3,\) "
                                         r"\(batch_first=True: x is \[B, T, input_size\]\)"):
        rnn.forward(x_time_major, lengths=[4, 4, 4])
    with pytest.raises(ValueError, match=r"lengths must be between 1 and T=3 .*got 4 at index 0 "
                                         r"\(batch_first=True"):
        rnn.forward(x_time_major, lengths=[4, 4, 4, 4])
    with pytest.raises(ValueError, match=r"state\['h'\] has batch size 3 but x has batch size 4 "
                                         r"\(batch_first=True"):
        rnn.forward(x_time_major, {"h": np.zeros((1, 3, 3))})
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, input_size=2\]"):
        rnn.forward(np.zeros((4, 2, 3)))
    y, _ = rnn.forward(np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward output "
                                         r"\[B=3, T=4, hidden_size=3\]; got \(4, 3, 3\) \(batch_first=True\)"):
        rnn.backward(np.zeros((4, 3, 3)))


def test_bidirectional_dy_shape():
    rnn = se.RNN("gru", 2, 3, bidirectional=True, seed=0)
    rnn.forward(np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward output "
                                         r"\[T=4, B=2, 2\*hidden_size=6\]; got \(4, 2, 3\)"):
        rnn.backward(np.zeros((4, 2, 3)))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_layers=0), ValueError, r"num_layers must be a positive integer; got 0"),
    (dict(num_layers=1.5), ValueError, r"num_layers must be a positive integer; got 1.5"),
    (dict(bidirectional=1), TypeError, r"bidirectional must be True or False; got 1"),
    (dict(batch_first="yes"), TypeError, r"batch_first must be True or False; got 'yes'"),
    (dict(num_layers=2, dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\); got 1.0"),
    (dict(num_layers=2, dropout=-0.1), ValueError, r"dropout must be a probability in \[0, 1\); got -0.1"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        se.RNN("gru", 2, 3, **kwargs)


def test_step_bad_input():
    with pytest.raises(ValueError, match=r"step\(\) needs bidirectional=False"):
        se.RNN("gru", 2, 3, bidirectional=True, seed=0).step(np.zeros((1, 2)))
    rnn = se.RNN("gru", 2, 3, num_layers=2, seed=0)
    with pytest.raises(ValueError, match=r"x_t must have shape \[B, input_size=2\] \(one time step\); "
                                         r"got shape \(1, 1, 2\)"):
        rnn.step(np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match=r"state\['h'\] must have shape \[layers\*directions=2, B, "
                                         r"hidden_size=3\] \(num_layers=2 \* num_directions=1\); got \(1, 1, 3\)"):
        rnn.step(np.zeros((1, 2)), {"h": np.zeros((1, 1, 3))})


def test_replaced_parameter_is_checked():
    rnn = se.RNN("gru", 2, 3, num_layers=2, seed=0)
    rnn.params["l1.W_r"] = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"params\['l1.W_r'\] must be a C-contiguous float32 array of shape "
                                         r"\[3, 3\]; got float32 array of shape \(3, 2\)"):
        rnn.forward(np.zeros((2, 1, 2)))
    with pytest.raises(ValueError, match=r"layer must be in 0..1 \(reverse only when bidirectional\); "
                                         r"got layer=0, reverse=True"):
        rnn.layer_params(0, reverse=True)
