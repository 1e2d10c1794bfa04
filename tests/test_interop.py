"""PyTorch interop: weights copied from torch.nn.LSTM / GRU / RNN give torch's outputs and gradients
(float32 on both sides), stacked, bidirectional, batch_first and with packed variable lengths."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import seqengine as se
from seqengine.interop import to_torch_arrays

from _seqengine_testing import assert_close

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
F32 = dict(rtol=2e-5, atol=2e-6)


def torch_run(module, x, state0, dy, dfinal, lengths, batch_first):
    """torch forward (packed when `lengths` is given) and backward of L = sum(y*dy) + sum(final*dfinal)."""
    x = torch.tensor(x, requires_grad=True)
    state0 = [torch.tensor(s, requires_grad=True) for s in state0]
    module.zero_grad()
    hx = tuple(state0) if isinstance(module, torch.nn.LSTM) else state0[0]
    if lengths is None:
        y, final = module(x, hx)
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        y, final = module(packed, hx)
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    final = final if isinstance(final, tuple) else (final,)
    loss = (y * torch.tensor(dy)).sum() + sum((f * torch.tensor(d)).sum() for f, d in zip(final, dfinal))
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    return (y.detach().numpy(), [f.detach().numpy() for f in final], x.grad.numpy(),
            [s.grad.numpy() for s in state0], grads)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first", [(1, False, False), (2, True, False),
                                                                      (2, True, True), (3, False, False)])
@pytest.mark.parametrize("lengths", [None, [3, 5, 1]], ids=["full", "varlen"])
def test_matches_torch(cell, num_layers, bidirectional, batch_first, lengths):
    torch.manual_seed(0)
    module = MODULES[cell](3, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    rnn = se.RNN(cell, 3, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, seed=1)
    rnn.load_torch_state_dict(module.state_dict())
    rng = np.random.default_rng(2)
    T, B, Dn = 5, 3, 2 if bidirectional else 1
    seq = (B, T) if batch_first else (T, B)
    x = rng.standard_normal((*seq, 3)).astype(np.float32)
    state0 = [rng.uniform(-1, 1, (num_layers * Dn, B, 4)).astype(np.float32) for _ in rnn.state_names]
    dy = rng.standard_normal((*seq, Dn * 4)).astype(np.float32)
    dfinal = [rng.standard_normal((num_layers * Dn, B, 4)).astype(np.float32) for _ in rnn.state_names]
    y_t, final_t, dx_t, dstate0_t, grads_t = torch_run(module, x, state0, dy, dfinal, lengths, batch_first)

    y, final = rnn.forward(x, dict(zip(rnn.state_names, state0)), lengths=lengths)
    dx, dstate0 = rnn.backward(dy, dict(zip(rnn.state_names, dfinal)))
    assert_close(y, y_t, what="y", **F32)
    assert_close(dx, dx_t, what="dx", **F32)
    for s, f_t, d_t in zip(rnn.state_names, final_t, dstate0_t):
        assert_close(final[s], f_t, what=f"final {s}", **F32)
        assert_close(dstate0[s], d_t, what=f"dstate0 {s}", **F32)
    grads = to_torch_arrays(rnn, rnn.grads)
    assert list(grads) == list(grads_t)
    for k in grads_t:
        assert_close(grads[k], grads_t[k], what=f"grad {k}", rtol=1e-4, atol=1e-5)


def test_matches_torch_elman_rnn():
    torch.manual_seed(3)
    module = torch.nn.RNN(2, 3, num_layers=2, bidirectional=True)
    rnn = se.RNN("rnn", 2, 3, num_layers=2, bidirectional=True).load_torch_state_dict(module.state_dict())
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2, 2)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (4, 2, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 2, 6)).astype(np.float32)
    dh = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y_t, (h_t,), dx_t, (dh0_t,), grads_t = torch_run(module, x, [h0], dy, [dh], [4, 2], False)
    y, final = rnn.forward(x, {"h": h0}, lengths=[4, 2])
    dx, dstate0 = rnn.backward(dy, {"h": dh})
    assert_close(y, y_t, what="y", **F32)
    assert_close(final["h"], h_t, what="h", **F32)
    assert_close(dx, dx_t, what="dx", **F32)
    assert_close(dstate0["h"], dh0_t, what="dh0", **F32)
    for k, g in to_torch_arrays(rnn, rnn.grads).items():
        assert_close(g, grads_t[k], what=k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_dict_round_trip(cell):
    rnn = se.RNN(cell, 3, 4, num_layers=2, bidirectional=True, seed=5)
    sd = rnn.torch_state_dict()
    module = MODULES[cell](3, 4, num_layers=2, bidirectional=True)
    assert list(sd) == list(module.state_dict())                # torch's key order
    module.load_state_dict(sd, strict=True)
    gates = {"lstm": "ifgo", "gru": "rzn"}[cell]
    W = module.weight_ih_l1_reverse.detach().numpy()
    for j, g in enumerate(gates):                               # row block j is gate j, exactly as torch stacks
        assert np.array_equal(W[j * 4:(j + 1) * 4], rnn.params[f"l1_reverse.W_{g}"])
    b = module.bias_hh_l0.detach().numpy()
    assert np.array_equal(b[4:8], rnn.params[f"l0.b_h{gates[1]}"])
    back = se.RNN(cell, 3, 4, num_layers=2, bidirectional=True, seed=6).load_torch_state_dict(module.state_dict())
    for k in rnn.params:
        assert np.array_equal(back.params[k], rnn.params[k]) and back.params[k].flags.c_contiguous
    sd64 = se.RNN(cell, 3, 4, dtype=np.float64).torch_state_dict()
    assert all(t.dtype == torch.float64 for t in sd64.values())


def test_bias_false_module_loads_zero_biases():
    torch.manual_seed(7)
    module = torch.nn.GRU(2, 3, bias=False)
    rnn = se.RNN("gru", 2, 3, seed=0).load_torch_state_dict(module.state_dict())
    assert all(np.all(rnn.params[b] == 0) for b in rnn.params if b.startswith("b_"))
    x = np.random.default_rng(8).standard_normal((3, 2, 2)).astype(np.float32)
    y_t, _ = module(torch.tensor(x))
    assert_close(rnn.forward(x)[0], y_t.detach().numpy(), what="y", **F32)


def test_refuses_a_state_dict_of_another_shape():
    rnn = se.RNN("lstm", 3, 4, num_layers=2, seed=0)
    before = {k: v.copy() for k, v in rnn.params.items()}
    with pytest.raises(ValueError, match=r"torch.nn.LSTM with num_layers=2, bidirectional=False, hidden_size=4\): "
                                         r"missing keys \['bias_hh_l1', 'bias_ih_l1', 'weight_hh_l1', "
                                         r"'weight_ih_l1'\], unexpected keys \[\]"):
        rnn.load_torch_state_dict(torch.nn.LSTM(3, 4).state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys \[.*'weight_ih_l0_reverse'"):
        rnn.load_torch_state_dict(torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict())
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l0'\] must have shape \[16, 3\] "
                                         r"\(gates i, f, g, o stacked, hidden_size=4\); got \[16, 2\]"):
        rnn.load_torch_state_dict(torch.nn.LSTM(2, 4, num_layers=2).state_dict())
    with pytest.raises(ValueError, match=r"proj_size is not supported"):
        rnn.load_torch_state_dict(torch.nn.LSTM(3, 4, num_layers=2, proj_size=2).state_dict())
    with pytest.raises(TypeError, match=r"state_dict must be a mapping such as torch.nn.LSTM"):
        rnn.load_torch_state_dict([1, 2])
    sd = OrderedDict((k, v.to(torch.int64)) for k, v in torch.nn.LSTM(3, 4, num_layers=2).state_dict().items())
    with pytest.raises(TypeError, match=r"state_dict\['weight_ih_l0'\] must be a floating-point tensor"):
        rnn.load_torch_state_dict(sd)
    for k in before:                                           # a refused load changes nothing
        assert np.array_equal(rnn.params[k], before[k])


def test_refuses_cells_without_torch_equations():
    with pytest.raises(ValueError, match=r"cell 'peephole' has no torch counterpart"):
        se.RNN("peephole", 3, 4).torch_state_dict()
    impostor = se.Cell(name="lstm", state=["h", "c"], equations="""
        i = sigmoid(W_i @ x + b_ii + U_i @ h_prev + b_hi)
        f = sigmoid(W_f @ x + b_if + U_f @ h_prev + b_hf)
        g = tanh(W_g @ x + b_ig + U_g @ h_prev + b_hg)
        o = sigmoid(W_o @ x + b_io + U_o @ h_prev + b_ho)
        c = f * c_prev + i * g
        h = o * c
    """)
    with pytest.raises(ValueError, match=r"cell 'lstm' does not compute torch.nn.LSTM's equations"):
        se.RNN(impostor, 3, 4).load_torch_state_dict(torch.nn.LSTM(3, 4).state_dict())


def test_import_seqengine_does_not_import_torch():
    code = ("import sys, numpy as np, seqengine as se; r = se.RNN('gru', 2, 3, num_layers=2, seed=0); "
            "r.forward(np.zeros((2, 1, 2))); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
