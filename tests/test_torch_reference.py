"""seqengine against PyTorch autograd: the equations of every built-in cell (and a few
custom ones) written by hand as a float64 step loop, plus torch.nn.LSTM / GRU / RNN
with copied weights. Outputs, final states and ALL gradients are compared."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import seqengine as se  # noqa: E402
from seqengine import functional  # noqa: E402
from seqengine.compiler.parse import parse_cell  # noqa: E402
from seqengine.compiler.schedule import schedule  # noqa: E402

from _seqengine_testing import BUILTIN, assert_close, make_problem, run_engine  # noqa: E402

sig, tanh = torch.sigmoid, torch.tanh


def mv(W, v):
    """W @ v for a batch of row vectors v [B, in], W [H, in]."""
    return v @ W.T


# -- the built-in cells, written by hand ----------------------------------------------
# step(p, x_t, prev) -> (new states dict, output)

def lstm_step(p, x, s):
    h, c = s["h"], s["c"]
    i = sig(mv(p["W_i"], x) + p["b_ii"] + mv(p["U_i"], h) + p["b_hi"])
    f = sig(mv(p["W_f"], x) + p["b_if"] + mv(p["U_f"], h) + p["b_hf"])
    g = tanh(mv(p["W_g"], x) + p["b_ig"] + mv(p["U_g"], h) + p["b_hg"])
    o = sig(mv(p["W_o"], x) + p["b_io"] + mv(p["U_o"], h) + p["b_ho"])
    c = f * c + i * g
    h = o * tanh(c)
    return {"h": h, "c": c}, h


def peephole_step(p, x, s):
    h, c_prev = s["h"], s["c"]
    i = sig(mv(p["W_i"], x) + mv(p["U_i"], h) + p["p_i"] * c_prev + p["b_i"])
    f = sig(mv(p["W_f"], x) + mv(p["U_f"], h) + p["p_f"] * c_prev + p["b_f"])
    g = tanh(mv(p["W_g"], x) + mv(p["U_g"], h) + p["b_g"])
    c = f * c_prev + i * g
    o = sig(mv(p["W_o"], x) + mv(p["U_o"], h) + p["p_o"] * c + p["b_o"])
    h = o * tanh(c)
    return {"h": h, "c": c}, h


def coupled_step(p, x, s):
    h, c = s["h"], s["c"]
    f = sig(mv(p["W_f"], x) + mv(p["U_f"], h) + p["b_f"])
    g = tanh(mv(p["W_g"], x) + mv(p["U_g"], h) + p["b_g"])
    o = sig(mv(p["W_o"], x) + mv(p["U_o"], h) + p["b_o"])
    c = f * c + (1 - f) * g
    h = o * tanh(c)
    return {"h": h, "c": c}, h


def gru_step(p, x, s):
    h = s["h"]
    r = sig(mv(p["W_r"], x) + p["b_ir"] + mv(p["U_r"], h) + p["b_hr"])
    z = sig(mv(p["W_z"], x) + p["b_iz"] + mv(p["U_z"], h) + p["b_hz"])
    n = tanh(mv(p["W_n"], x) + p["b_in"] + r * (mv(p["U_n"], h) + p["b_hn"]))
    h = (1 - z) * n + z * h
    return {"h": h}, h


def gru_cho_step(p, x, s):
    h = s["h"]
    r = sig(mv(p["W_r"], x) + mv(p["U_r"], h) + p["b_r"])
    z = sig(mv(p["W_z"], x) + mv(p["U_z"], h) + p["b_z"])
    n = tanh(mv(p["W_n"], x) + mv(p["U_n"], r * h) + p["b_n"])
    h = (1 - z) * h + z * n
    return {"h": h}, h


def rnn_step(p, x, s):
    h = tanh(mv(p["W"], x) + p["b_i"] + mv(p["U"], s["h"]) + p["b_h"])
    return {"h": h}, h


BUILTIN_STEPS = {"lstm": lstm_step, "peephole": peephole_step, "coupled": coupled_step,
                 "gru": gru_step, "gru_cho": gru_cho_step, "rnn": rnn_step}


# -- custom cells and their hand-written torch versions ---------------------------------

CUSTOM = {
    # several segments: U_m @ (r * h_prev) needs r, V @ (z * m) needs m; an intermediate is the output
    "multi_segment": (se.Cell(
        name="t_multi_segment", state=["h", "c"], output="q",
        equations="""
            r = sigmoid(W_r @ x + U_r @ h_prev + b_r)
            z = sigmoid(W_z @ x + U_z @ h_prev + b_z)
            m = tanh(W_m @ x + U_m @ (r * h_prev) + b_m)
            q = tanh(V @ (z * m) + P @ c_prev) * r
            c = 0.5 * c_prev + (1 - z) * q
            h = (1 - z) * h_prev + z * m + V2 @ q
        """), lambda p, x, s: _multi_segment(p, x, s)),
    # the rest of the function vocabulary: exp log relu softplus abs sqrt maximum minimum, / and unary -
    "functions": (se.Cell(
        name="t_functions", state=["h"],
        equations="""
            a = W_a @ x + U_a @ h_prev + b_a
            e = W_e @ x - U_e @ h_prev
            s = softplus(a) - relu(e) + abs(a) / (1 + exp(-e))
            t = log(1 + sigmoid(a)) * sqrt(1 + e * e) + maximum(a, e) - minimum(a, -e)
            h = tanh(s - t / 2 + w * h_prev)
        """), lambda p, x, s: _functions(p, x, s)),
    # output is the second state
    "output_second_state": (se.Cell(
        name="t_output_c", state=["h", "c"], output="c",
        equations="""
            c = tanh(W @ x + U @ h_prev) + 0.9 * c_prev * sigmoid(b)
            h = sigmoid(c + d)
        """), lambda p, x, s: _output_c(p, x, s)),
    # no product with x at all: dx must be exactly zero
    "no_x": (se.Cell(
        name="t_no_x", state=["h"],
        equations="""
            h = tanh(U @ h_prev + b)
        """), lambda p, x, s: _no_x(p, x, s)),
    # no recurrent matrix: the time loop has no GEMM
    "no_recurrent_gemm": (se.Cell(
        name="t_no_gemm", state=["h"],
        equations="""
            k = sigmoid(W_k @ x + b_k)
            h = k * h_prev + (1 - k) * tanh(W @ x)
        """), lambda p, x, s: _no_gemm(p, x, s)),
}


def _multi_segment(p, x, s):
    h, c_prev = s["h"], s["c"]
    r = sig(mv(p["W_r"], x) + mv(p["U_r"], h) + p["b_r"])
    z = sig(mv(p["W_z"], x) + mv(p["U_z"], h) + p["b_z"])
    m = tanh(mv(p["W_m"], x) + mv(p["U_m"], r * h) + p["b_m"])
    q = tanh(mv(p["V"], z * m) + mv(p["P"], c_prev)) * r
    c = 0.5 * c_prev + (1 - z) * q
    h = (1 - z) * h + z * m + mv(p["V2"], q)
    return {"h": h, "c": c}, q


def _functions(p, x, st):
    h = st["h"]
    a = mv(p["W_a"], x) + mv(p["U_a"], h) + p["b_a"]
    e = mv(p["W_e"], x) - mv(p["U_e"], h)
    s = torch.nn.functional.softplus(a) - torch.relu(e) + torch.abs(a) / (1 + torch.exp(-e))
    t = torch.log(1 + sig(a)) * torch.sqrt(1 + e * e) + torch.maximum(a, e) - torch.minimum(a, -e)
    h = tanh(s - t / 2 + p["w"] * h)
    return {"h": h}, h


def _output_c(p, x, s):
    c = tanh(mv(p["W"], x) + mv(p["U"], s["h"])) + 0.9 * s["c"] * sig(p["b"])
    h = sig(c + p["d"])
    return {"h": h, "c": c}, c


def _no_x(p, x, s):
    h = tanh(mv(p["U"], s["h"]) + p["b"])
    return {"h": h}, h


def _no_gemm(p, x, s):
    k = sig(mv(p["W_k"], x) + p["b_k"])
    h = k * s["h"] + (1 - k) * tanh(mv(p["W"], x))
    return {"h": h}, h


# -- the torch harness ------------------------------------------------------------------

def torch_reference(step, state_names, params, x, state0, dy, dfinal):
    """Run `step` over time in float64 with autograd; the loss is
    sum(y * dy) + sum_s sum(final_s * dfinal_s). Returns y, final, dx, dstate0, grads."""
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ts0 = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in state0.items()}
    s, ys = dict(ts0), []
    for t in range(x.shape[0]):
        s, out = step(tp, tx[t], s)
        ys.append(out)
    y = torch.stack(ys)
    loss = (y * torch.tensor(dy)).sum() + sum((s[k] * torch.tensor(dfinal[k])).sum() for k in state_names)
    loss.backward()
    grads = {k: (v.grad.numpy() if v.grad is not None else np.zeros_like(params[k])) for k, v in tp.items()}
    dx = tx.grad.numpy() if tx.grad is not None else np.zeros_like(x)   # a cell that never reads x
    return (y.detach().numpy(), {k: s[k].detach().numpy() for k in state_names}, dx,
            {k: ts0[k].grad.numpy() for k in state_names}, grads)


def compare(name, ours, ref, rtol, atol):
    labels = ["y", "final", "dx", "dstate0", "grads"]
    for label, a, b in zip(labels, ours, ref):
        if isinstance(b, dict):
            assert set(a) == set(b), f"{name} {label}: keys {sorted(a)} != {sorted(b)}"
            for k in b:
                assert_close(a[k], b[k], rtol, atol, f"{name} {label}[{k}]")
        else:
            assert_close(a, b, rtol, atol, f"{name} {label}")


def test_every_builtin_cell_has_a_reference():
    assert set(BUILTIN) == set(BUILTIN_STEPS), "a built-in cell was added or removed: write its torch reference"


@pytest.mark.parametrize("name", sorted(BUILTIN_STEPS))
def test_builtin_cell_vs_handwritten_torch(name):
    cell, params, x, state0, dy, dfinal = make_problem(name, input_size=3, hidden_size=5, steps=5, batch=3, seed=10)
    # the reference reads exactly the parameters seqengine declares
    assert set(params) == set(functional.param_shapes(cell, 3, 5))
    ref = torch_reference(BUILTIN_STEPS[name], cell.state, params, x, state0, dy, dfinal)
    ours = run_engine(cell, params, x, state0, dy, dfinal, np.float64)
    compare(name, ours, ref, rtol=1e-10, atol=1e-10)
    ours32 = run_engine(cell, params, x, state0, dy, dfinal, np.float32)
    compare(name + " float32", ours32, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_cho"])
def test_builtin_cell_vs_torch_at_a_shape_with_panels(name):
    """Enough rows and units for the packed-panel GEMMs (and a column tail past the panels: D = 40). GRU
    after Cho takes its x products' adjoints from two in-loop groups' d_prods (U_r; U_z and U_n: dx is
    their two products with row blocks of W_x, added), the LSTM from one, the GRU from its own array."""
    sharing = {"lstm": ["g0"], "gru": [], "gru_cho": ["g0", "g1"]}[name]
    cell, params, x, state0, dy, dfinal = make_problem(name, input_size=40, hidden_size=32, steps=6, batch=8, seed=12)
    assert [g.name for g in schedule(parse_cell(cell), recompute=True).x_adjoint_groups] == sharing
    ref = torch_reference(BUILTIN_STEPS[name], cell.state, params, x, state0, dy, dfinal)
    compare(name, run_engine(cell, params, x, state0, dy, dfinal, np.float64), ref, rtol=1e-10, atol=1e-10)
    compare(name + " float32", run_engine(cell, params, x, state0, dy, dfinal, np.float32), ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_cell_vs_handwritten_torch(name):
    cell, step = CUSTOM[name]
    cell, params, x, state0, dy, dfinal = make_problem(cell, input_size=3, hidden_size=4, steps=4, batch=3, seed=11)
    ref = torch_reference(step, cell.state, params, x, state0, dy, dfinal)
    ours = run_engine(cell, params, x, state0, dy, dfinal, np.float64)
    compare(name, ours, ref, rtol=1e-10, atol=1e-10)
    if name == "no_x":
        assert np.all(ours[2] == 0.0)


def test_multi_segment_cell_really_has_segments():
    """Guard for the custom test above: it must exercise in-loop products of computed values."""
    from seqengine.compiler.parse import parse_cell
    from seqengine.compiler.schedule import schedule
    sched = schedule(parse_cell(CUSTOM["multi_segment"][0]))
    assert len(sched.segments) >= 3
    assert len(sched.operand_groups()) >= 2


# -- torch.nn modules with copied weights -----------------------------------------------

def _torch_module_run(module, x, h0, c0, dy, dh, dc):
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0[None], requires_grad=True)
    tc0 = None if c0 is None else torch.tensor(c0[None], requires_grad=True)
    y, fin = module(tx, th0 if tc0 is None else (th0, tc0))
    hn, cn = (fin, None) if tc0 is None else fin
    loss = (y * torch.tensor(dy)).sum() + (hn[0] * torch.tensor(dh)).sum()
    if cn is not None:
        loss = loss + (cn[0] * torch.tensor(dc)).sum()
    loss.backward()
    return y, hn, cn, tx, th0, tc0


def _problem(D, H, T, B, seed, dtype):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, D)).astype(dtype), rng.uniform(-1, 1, (B, H)).astype(dtype),
            rng.uniform(-1, 1, (B, H)).astype(dtype), rng.standard_normal((T, B, H)).astype(dtype),
            rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype))


TOL = {np.float64: (1e-10, 1e-10), np.float32: (1e-5, 1e-5)}


def _copy_torch_weights(module, rnn, gates):
    """torch's stacked weight_ih/hh and bias_ih/hh rows, gate block by gate block, into W_g, U_g, b_ig, b_hg."""
    H = rnn.hidden_size
    stacks = [getattr(module, n).detach().numpy() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    for k, g in enumerate(gates):
        for prefix, a in zip(("W_", "U_", "b_i", "b_h"), stacks):
            rnn.params[prefix + g] = a[k * H:(k + 1) * H].copy()


def _assert_torch_grads(module, rnn, gates, rtol, atol, what):
    """Every parameter gradient of seqengine against torch's, gate block by gate block."""
    H = rnn.hidden_size
    for name, prefix in (("weight_ih_l0", "W_"), ("weight_hh_l0", "U_"), ("bias_ih_l0", "b_i"), ("bias_hh_l0", "b_h")):
        grad = getattr(module, name).grad.numpy()
        for k, g in enumerate(gates):
            assert_close(rnn.grads[prefix + g], grad[k * H:(k + 1) * H], rtol, atol, f"{what} d{prefix}{g}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_lstm_vs_torch_nn_lstm(dtype):
    D, H, T, B = 3, 5, 5, 3
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rtol, atol = TOL[dtype]
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(D, H).to(tdt)
    rnn = se.RNN("lstm", D, H, dtype=dtype)
    gates = "ifgo"   # torch's gate order of the stacked weights
    _copy_torch_weights(lstm, rnn, gates)
    assert set(rnn.params) == {f"{p}_{g}" for p in "WU" for g in gates} | {f"b_{s}{g}" for s in "ih" for g in gates}
    x, h0, c0, dy, dh, dc = _problem(D, H, T, B, 1, dtype)
    y_t, hn_t, cn_t, tx, th0, tc0 = _torch_module_run(lstm, x, h0, c0, dy, dh, dc)

    y, fin = rnn.forward(x, {"h": h0[None], "c": c0[None]})
    dx, dstate0 = rnn.backward(dy, {"h": dh[None], "c": dc[None]})
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_t.detach().numpy(), rtol, atol, "lstm y")
    assert_close(fin["h"], hn_t.detach().numpy(), rtol, atol, "lstm h_n")
    assert_close(fin["c"], cn_t.detach().numpy(), rtol, atol, "lstm c_n")
    assert_close(dx, tx.grad.numpy(), rtol, atol, "lstm dx")
    assert_close(dstate0["h"], th0.grad.numpy(), rtol, atol, "lstm dh0")
    assert_close(dstate0["c"], tc0.grad.numpy(), rtol, atol, "lstm dc0")
    _assert_torch_grads(lstm, rnn, gates, rtol, atol, "lstm")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_gru_vs_torch_nn_gru(dtype):
    D, H, T, B = 4, 3, 5, 2
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rtol, atol = TOL[dtype]
    torch.manual_seed(1)
    gru = torch.nn.GRU(D, H).to(tdt)
    rnn = se.RNN("gru", D, H, dtype=dtype)
    gates = "rzn"
    _copy_torch_weights(gru, rnn, gates)
    assert set(rnn.params) == {f"{p}_{g}" for p in "WU" for g in gates} | {f"b_{s}{g}" for s in "ih" for g in gates}
    x, h0, _, dy, dh, _ = _problem(D, H, T, B, 2, dtype)
    y_t, hn_t, _, tx, th0, _ = _torch_module_run(gru, x, h0, None, dy, dh, None)

    y, fin = rnn.forward(x, {"h": h0[None]})
    dx, dstate0 = rnn.backward(dy, {"h": dh[None]})
    assert_close(y, y_t.detach().numpy(), rtol, atol, "gru y")
    assert_close(fin["h"], hn_t.detach().numpy(), rtol, atol, "gru h_n")
    assert_close(dx, tx.grad.numpy(), rtol, atol, "gru dx")
    assert_close(dstate0["h"], th0.grad.numpy(), rtol, atol, "gru dh0")
    _assert_torch_grads(gru, rnn, gates, rtol, atol, "gru")


def test_rnn_vs_torch_nn_rnn():
    D, H, T, B = 3, 4, 4, 3
    torch.manual_seed(2)
    ref = torch.nn.RNN(D, H, nonlinearity="tanh").double()
    rnn = se.RNN("rnn", D, H, dtype=np.float64)
    rnn.params.update(W=ref.weight_ih_l0.detach().numpy().copy(), U=ref.weight_hh_l0.detach().numpy().copy(),
                      b_i=ref.bias_ih_l0.detach().numpy().copy(), b_h=ref.bias_hh_l0.detach().numpy().copy())
    x, h0, _, dy, dh, _ = _problem(D, H, T, B, 3, np.float64)
    y_t, hn_t, _, tx, th0, _ = _torch_module_run(ref, x, h0, None, dy, dh, None)
    y, fin = rnn.forward(x, {"h": h0[None]})
    dx, dstate0 = rnn.backward(dy, {"h": dh[None]})
    assert_close(y, y_t.detach().numpy(), 1e-10, 1e-10, "rnn y")
    assert_close(fin["h"], hn_t.detach().numpy(), 1e-10, 1e-10, "rnn h_n")
    assert_close(dx, tx.grad.numpy(), 1e-10, 1e-10, "rnn dx")
    assert_close(dstate0["h"], th0.grad.numpy(), 1e-10, 1e-10, "rnn dh0")
    for ours, theirs in [("W", ref.weight_ih_l0), ("U", ref.weight_hh_l0), ("b_i", ref.bias_ih_l0),
                         ("b_h", ref.bias_hh_l0)]:
        assert_close(rnn.grads[ours], theirs.grad.numpy(), 1e-10, 1e-10, f"rnn d{ours}")


def test_default_init_is_uniform_like_torch():
    """Default parameters are drawn U(-1/sqrt(H), 1/sqrt(H)) like torch's; `init` constants are honoured."""
    H = 4
    rnn = se.RNN("coupled", input_size=3, hidden_size=H, seed=5, dtype=np.float64)
    bound = 1 / np.sqrt(H)
    for name, p in rnn.params.items():
        if name == "b_f":
            np.testing.assert_array_equal(p, np.ones(H))
        else:
            assert np.all(np.abs(p) <= bound) and np.std(p) > 0.1 * bound, name
    again = se.RNN("coupled", input_size=3, hidden_size=H, seed=5, dtype=np.float64)
    for name in rnn.params:
        np.testing.assert_array_equal(rnn.params[name], again.params[name])
