"""The layer API (`seqengine.RNN`) refuses every bad input with a clear error naming the
argument and what was expected; it converts (never broadcasts) what it accepts."""

from __future__ import annotations

import re

import numpy as np
import pytest

import seqengine as se

from _seqengine_testing import assert_close, run_engine

D, H, T, B = 3, 4, 3, 2


@pytest.fixture(scope="module")
def lstm():
    return se.RNN("lstm", input_size=D, hidden_size=H, seed=0)


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


# -- constructor ------------------------------------------------------------------------

@pytest.mark.parametrize("arg, value", [("input_size", 0), ("input_size", -2), ("input_size", 2.5),
                                        ("input_size", "3"), ("input_size", True), ("hidden_size", 0),
                                        ("hidden_size", None)])
def test_sizes_must_be_positive_integers(arg, value):
    kwargs = {"input_size": D, "hidden_size": H, arg: value}
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be a positive integer; got {value!r}")):
        se.RNN("rnn", **kwargs)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex64", "not-a-dtype", object])
def test_dtype_must_be_float32_or_float64(dtype):
    with pytest.raises(TypeError, match="dtype must be float32 or float64; got"):
        se.RNN("rnn", D, H, dtype=dtype)


@pytest.mark.parametrize("backend", ["gpu", "CPU", "", None])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match=re.escape(f"backend must be one of ('cpu', 'cuda'); got {backend!r}")):
        se.RNN("rnn", D, H, backend=backend)


def test_unknown_cell_name():
    with pytest.raises(se.UnknownCellError) as info:
        se.RNN("gruu", D, H)
    msg = str(info.value)
    assert "no cell named 'gruu'" in msg and "did you mean 'gru'?" in msg and "registered:" in msg and "lstm" in msg


def test_cell_of_the_wrong_type():
    with pytest.raises(TypeError, match="cell must be a registered cell name or a seqengine.Cell, got dict"):
        se.RNN({"name": "lstm"}, D, H)


# -- x ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, D), (T, B, D, 1), (D,)])
def test_x_of_the_wrong_rank(lstm, shape):
    with pytest.raises(ValueError) as info:
        lstm.forward(zeros(*shape))
    msg = str(info.value)
    assert msg.startswith("x must have shape [T, B, input_size=3]") and f"{len(shape)}-d" in msg \
        and str(shape) in msg


def test_x_with_the_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match=re.escape("x must have shape [T, B, input_size=3]; got feature size 4 "
                                                   "(shape (3, 2, 4))")):
        lstm.forward(zeros(T, B, 4))


@pytest.mark.parametrize("shape", [(0, B, D), (T, 0, D)])
def test_x_without_steps_or_sequences(lstm, shape):
    with pytest.raises(ValueError, match=re.escape(f"x must have at least one step and one sequence; got shape "
                                                   f"{shape}")):
        lstm.forward(zeros(*shape))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128, np.uint8])
def test_x_of_a_non_floating_dtype_is_refused(lstm, dtype):
    with pytest.raises(TypeError) as info:
        lstm.forward(np.ones((T, B, D), dtype))
    msg = str(info.value)
    assert msg.startswith("x must be a floating-point array") and f"got dtype {np.dtype(dtype)}" in msg \
        and "float32" in msg


def test_x_of_the_wrong_type(lstm):
    with pytest.raises(TypeError, match=re.escape("x must be a NumPy array of shape [T, B, input_size=3]; got str")):
        lstm.forward("not an array")
    with pytest.raises(TypeError, match="x must be a floating-point array.*got dtype int"):
        lstm.forward([[[1, 2, 3]]])   # a list of ints is converted, then refused as integers


def test_float64_and_non_contiguous_x_are_converted(lstm, x):
    """Converted inputs give the numbers of the contiguous float32 run (checked against float64 math)."""
    y_ref, fin_ref = lstm.forward(x)
    y_ref, fin_ref = y_ref.copy(), {k: v.copy() for k, v in fin_ref.items()}
    # float64 input into a float32 layer
    y64, fin64 = lstm.forward(x.astype(np.float64))
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(y64, y_ref)
    # non-contiguous: every other step of a longer array, and a transposed batch-major array
    big = np.zeros((2 * T, B, D), np.float32)
    big[::2] = x
    y_nc, _ = lstm.forward(big[::2])
    np.testing.assert_array_equal(y_nc, y_ref)
    y_tr, fin_tr = lstm.forward(np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2))
    np.testing.assert_array_equal(y_tr, y_ref)
    for k in fin_ref:
        np.testing.assert_array_equal(fin_tr[k], fin_ref[k])
    # and those numbers are right: the float64 engine on the same params
    params64 = {k: v.astype(np.float64) for k, v in lstm.params.items()}
    state0 = {s: np.zeros((B, H)) for s in ("h", "c")}
    y_64, final_64, *_ = run_engine(lstm.cell, params64, x.astype(np.float64), state0, np.zeros((T, B, H)),
                                    {s: np.zeros((B, H)) for s in ("h", "c")})
    assert_close(y_ref, y_64, 1e-5, 1e-6, "float32 layer vs float64 engine")
    assert_close(fin_ref["c"][0], final_64["c"], 1e-5, 1e-6, "final c")


def test_list_input_is_converted(lstm, x):
    y_ref, _ = lstm.forward(x)
    y_ref = y_ref.copy()
    y_list, _ = lstm.forward(x.tolist())
    np.testing.assert_array_equal(y_list, y_ref)


# -- state ------------------------------------------------------------------------------

def test_state_must_be_a_dict(lstm, x):
    with pytest.raises(TypeError) as info:
        lstm.forward(x, zeros(1, B, H))
    msg = str(info.value)
    assert msg.startswith("state must be a dict") and "['h', 'c']" in msg and "[1, 2, 4]" in msg and "ndarray" in msg


@pytest.mark.parametrize("keys, missing, extra", [(["h"], ["c"], []), (["h", "c", "m"], [], ["m"]),
                                                  (["h", "C"], ["c"], ["C"])])
def test_state_with_the_wrong_keys(lstm, x, keys, missing, extra):
    with pytest.raises(ValueError, match=re.escape(f"state must have exactly the keys ['h', 'c']; missing {missing}, "
                                                   f"unexpected {extra}")):
        lstm.forward(x, {k: zeros(1, B, H) for k in keys})


@pytest.mark.parametrize("shape", [(B, H), (1, B, H + 1), (2, B, H), (1, 1, B, H)])
def test_state_of_the_wrong_shape(lstm, x, shape):
    with pytest.raises(ValueError) as info:
        lstm.forward(x, {"h": zeros(*shape), "c": zeros(1, B, H)})
    msg = str(info.value)
    assert msg.startswith("state['h'] must have shape [layers*directions=1, B, hidden_size=4]") \
        and f"got {shape}" in msg


def test_state_batch_must_match_x(lstm, x):
    with pytest.raises(ValueError, match=re.escape("state['c'] has batch size 1 but x has batch size 2")):
        lstm.forward(x, {"h": zeros(1, B, H), "c": zeros(1, 1, H)})   # no broadcasting of a batch of 1


def test_integer_state_is_refused(lstm, x):
    with pytest.raises(TypeError, match=re.escape("state['h'] must be a floating-point array") + ".*got dtype int64"):
        lstm.forward(x, {"h": np.zeros((1, B, H), np.int64), "c": zeros(1, B, H)})


def test_float64_non_contiguous_state_is_converted(lstm, x):
    rng = np.random.default_rng(1)
    h0 = rng.uniform(-1, 1, (1, B, H)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (1, B, H)).astype(np.float32)
    y_ref, _ = lstm.forward(x, {"h": h0, "c": c0})
    y_ref = y_ref.copy()
    wide = np.zeros((1, B, 2 * H))
    wide[..., ::2] = h0
    y, _ = lstm.forward(x, {"h": wide[..., ::2], "c": c0.astype(np.float64)})
    np.testing.assert_array_equal(y, y_ref)
    assert np.abs(y_ref - lstm.forward(x)[0]).max() > 1e-3   # the initial state really mattered


# -- backward ---------------------------------------------------------------------------

def test_backward_before_forward():
    rnn = se.RNN("rnn", D, H, seed=0)
    with pytest.raises(RuntimeError, match=re.escape("backward() needs a forward() in training mode first")):
        rnn.backward(zeros(T, B, H))


def test_backward_after_an_inference_forward(x):
    rnn = se.RNN("rnn", D, H, seed=0)
    rnn.forward(x)
    rnn.eval()
    rnn.forward(x)
    with pytest.raises(RuntimeError, match=re.escape("backward() needs a forward() in training mode first")):
        rnn.backward(zeros(T, B, H))


@pytest.mark.parametrize("shape", [(T, B, H + 1), (T - 1, B, H), (T, 1, H), (B, H), (T * B * H,)])
def test_dy_of_the_wrong_shape(lstm, x, shape):
    lstm.forward(x)
    with pytest.raises(ValueError) as info:
        lstm.backward(zeros(*shape))
    msg = str(info.value)
    assert msg.startswith("dy must have the shape of the forward output [T=3, B=2, hidden_size=4]") \
        and f"got {shape}" in msg


def test_integer_dy_is_refused(lstm, x):
    lstm.forward(x)
    with pytest.raises(TypeError, match=r"dy must be a floating-point array.*got dtype int64"):
        lstm.backward(np.ones((T, B, H), np.int64))


def test_dstate_with_the_wrong_keys_and_batch(lstm, x):
    lstm.forward(x)
    with pytest.raises(ValueError, match=re.escape("dstate must have exactly the keys ['h', 'c']; missing ['c']")):
        lstm.backward(None, {"h": zeros(1, B, H)})
    with pytest.raises(ValueError, match=re.escape("dstate['h'] has batch size 3 but x has batch size 2")):
        lstm.backward(None, {"h": zeros(1, 3, H), "c": zeros(1, B, H)})


def test_backward_none_means_zeros_and_converted_dy_is_right(x):
    rnn = se.RNN("gru", D, H, seed=3)
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    rnn.forward(x)
    dx_ref, ds_ref = rnn.backward(dy)
    dx_ref, g_ref = dx_ref.copy(), {k: v.copy() for k, v in rnn.grads.items()}
    dh_ref = ds_ref["h"].copy()
    # float64, non-contiguous dy: same numbers
    big = np.zeros((T, B, 2 * H))
    big[..., 1::2] = dy
    rnn.forward(x)
    dx, ds = rnn.backward(big[..., 1::2], {"h": np.zeros((1, B, H))})
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(ds["h"], dh_ref)
    for k in g_ref:
        np.testing.assert_array_equal(rnn.grads[k], g_ref[k])
    # None dy: zero gradients everywhere
    rnn.forward(x)
    dx0, ds0 = rnn.backward(None)
    assert np.all(dx0 == 0) and np.all(ds0["h"] == 0) and all(np.all(g == 0) for g in rnn.grads.values())
    # and dx_ref is right: float64 engine on the same numbers
    p64 = {k: v.astype(np.float64) for k, v in rnn.params.items()}
    _, _, dx64, _, g64 = run_engine(rnn.cell, p64, x.astype(np.float64), {"h": np.zeros((B, H))},
                                    dy.astype(np.float64), {"h": np.zeros((B, H))})
    assert_close(dx_ref, dx64, 1e-4, 1e-5, "dx")
    for k in g64:
        assert_close(g_ref[k], g64[k], 1e-4, 1e-5, f"d{k}")


def test_read_only_inputs_are_accepted_and_the_training_output_is_read_only(x):
    """A read-only x (a memory map, np.frombuffer) and dy give the numbers of writable ones (a read-only x
    once broke backward's weight GEMMs in Numba's typing); the training y is the tape's own memory,
    handed out read-only, with the numbers of an inference run (checked against the float64 engine)."""
    rnn = se.RNN("rnn", D, H, seed=5)
    dy = np.random.default_rng(4).standard_normal((T, B, H)).astype(np.float32)
    y_ref, _ = rnn.forward(x)
    dx_ref, _ = rnn.backward(dy)
    y_ref, dx_ref, g_ref = y_ref.copy(), dx_ref.copy(), {k: v.copy() for k, v in rnn.grads.items()}
    x_ro, dy_ro = x.copy(), dy.copy()
    x_ro.flags.writeable = dy_ro.flags.writeable = False
    y, _ = rnn.forward(x_ro)
    assert not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 0.0
    dx, _ = rnn.backward(dy_ro)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    for k in g_ref:
        np.testing.assert_array_equal(rnn.grads[k], g_ref[k])
    rnn.eval()
    y_eval, _ = rnn.forward(x_ro)
    assert y_eval.flags.writeable
    np.testing.assert_array_equal(y_eval, y_ref)
    p64 = {k: v.astype(np.float64) for k, v in rnn.params.items()}
    y64, _, dx64, _, _ = run_engine(rnn.cell, p64, x.astype(np.float64), {"h": np.zeros((B, H))},
                                    dy.astype(np.float64), {"h": np.zeros((B, H))})
    assert_close(y_ref, y64, 1e-5, 1e-6, "y")
    assert_close(dx_ref, dx64, 1e-4, 1e-5, "dx")


def test_grads_are_set_not_accumulated(x):
    rnn = se.RNN("rnn", D, H, seed=0)
    dy = np.ones((T, B, H), np.float32)
    rnn.forward(x)
    rnn.backward(dy)
    first = {k: v.copy() for k, v in rnn.grads.items()}
    assert set(first) == set(rnn.params) and all(first[k].shape == rnn.params[k].shape for k in first)
    rnn.forward(x)
    rnn.backward(dy)
    for k in first:
        np.testing.assert_array_equal(rnn.grads[k], first[k])


def test_shapes_and_dtypes_of_the_results(x):
    for dtype in (np.float32, np.float64):
        rnn = se.RNN("peephole", D, H, dtype=dtype, seed=0)
        y, state = rnn.forward(x)
        assert y.shape == (T, B, H) and y.dtype == dtype
        assert set(state) == {"h", "c"} and all(v.shape == (1, B, H) and v.dtype == dtype for v in state.values())
        np.testing.assert_array_equal(state["h"][0], y[-1])   # output of the lstm family is h
        dx, ds = rnn.backward(np.ones_like(y))
        assert dx.shape == (T, B, D) and dx.dtype == dtype
        assert all(v.shape == (1, B, H) and v.dtype == dtype for v in ds.values())
