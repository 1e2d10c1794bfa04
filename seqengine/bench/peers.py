"""The implementations the runner times against each other, behind one interface.

Every implementation is built from seqengine's parameters (the same weights,
names as in the cell's equations) and the same inputs:

    impl = make_impl(name, cell, params, x, state0, dy)   # NumPy float32 arrays
    impl.forward()      -> {"y": [T, B, H], "final_<s>": [B, H]}          inference, no tape
    impl.train_step()   -> forward outputs + {"dx": [T, B, D], "dstate0_<s>": [B, H], "grad_<p>": ...}

`dy` is the adjoint of y; the adjoint of the final state is zero. The peers are
written independently of seqengine's compiler:

* ``torch-native``: torch.nn.LSTM / torch.nn.GRU (oneDNN), lstm and gru only.
* ``torch-loop``: the cell by hand with torch autograd, one step at a time, as a
  researcher writes a custom variant today (fused gate weights, one ``mm`` per
  operand per step, the layout of PyTorch's own ``benchmarks/fastrnns``).
  One small function per cell, written by hand, no translator.
* ``numpy``: the same cells in plain NumPy, forward only (a hand-written BPTT
  per cell would be a second implementation to trust, and far too slow to time).
"""

from __future__ import annotations

import numpy as np

IMPLS = ("seqengine", "torch-native", "torch-loop", "numpy")


class Unsupported(Exception):
    """This implementation does not cover the (cell, mode) asked for."""


# ---------------------------------------------------------------------------------------------
# Hand-written torch cells. p: {name: tensor} (seqengine's names and shapes: matrices [H, in],
# vectors [H]); x [T, B, D]; state {s: [B, H]}. Each returns y [T, B, H] and the final state.
# ---------------------------------------------------------------------------------------------

def _cat(torch, p, names):
    return torch.cat([p[n] for n in names], 0)


def torch_lstm(torch, p, x, state):
    w = _cat(torch, p, ["W_i", "W_f", "W_g", "W_o"]).t()                       # [D, 4H]
    u = _cat(torch, p, ["U_i", "U_f", "U_g", "U_o"]).t()                       # [H, 4H]
    b = _cat(torch, p, ["b_ii", "b_if", "b_ig", "b_io"]) + _cat(torch, p, ["b_hi", "b_hf", "b_hg", "b_ho"])
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x.unbind(0):
        i, f, g, o = (torch.mm(x_t, w) + torch.mm(h, u) + b).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), {"h": h, "c": c}


def torch_peephole(torch, p, x, state):
    w = _cat(torch, p, ["W_i", "W_f", "W_g", "W_o"]).t()
    u = _cat(torch, p, ["U_i", "U_f", "U_g", "U_o"]).t()
    b = _cat(torch, p, ["b_i", "b_f", "b_g", "b_o"])
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x.unbind(0):
        i, f, g, o = (torch.mm(x_t, w) + torch.mm(h, u) + b).chunk(4, 1)
        i = torch.sigmoid(i + p["p_i"] * c)
        f = torch.sigmoid(f + p["p_f"] * c)
        c = f * c + i * torch.tanh(g)
        h = torch.sigmoid(o + p["p_o"] * c) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), {"h": h, "c": c}


def torch_coupled(torch, p, x, state):
    w = _cat(torch, p, ["W_f", "W_g", "W_o"]).t()
    u = _cat(torch, p, ["U_f", "U_g", "U_o"]).t()
    b = _cat(torch, p, ["b_f", "b_g", "b_o"])
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x.unbind(0):
        f, g, o = (torch.mm(x_t, w) + torch.mm(h, u) + b).chunk(3, 1)
        f = torch.sigmoid(f)
        c = f * c + (1 - f) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), {"h": h, "c": c}


def torch_gru(torch, p, x, state):
    w = _cat(torch, p, ["W_r", "W_z", "W_n"]).t()
    u = _cat(torch, p, ["U_r", "U_z", "U_n"]).t()
    bi = _cat(torch, p, ["b_ir", "b_iz", "b_in"])
    bh = _cat(torch, p, ["b_hr", "b_hz", "b_hn"])
    h = state["h"]
    ys = []
    for x_t in x.unbind(0):
        xr, xz, xn = (torch.mm(x_t, w) + bi).chunk(3, 1)
        hr, hz, hn = (torch.mm(h, u) + bh).chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys), {"h": h}


def torch_gru_cho(torch, p, x, state):
    w = _cat(torch, p, ["W_r", "W_z", "W_n"]).t()
    u_rz = _cat(torch, p, ["U_r", "U_z"]).t()                                   # [H, 2H]
    u_n = p["U_n"].t()
    b = _cat(torch, p, ["b_r", "b_z", "b_n"])
    h = state["h"]
    ys = []
    for x_t in x.unbind(0):
        xr, xz, xn = (torch.mm(x_t, w) + b).chunk(3, 1)
        hr, hz = torch.mm(h, u_rz).chunk(2, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + torch.mm(r * h, u_n))
        h = (1 - z) * h + z * n
        ys.append(h)
    return torch.stack(ys), {"h": h}


def torch_rnn(torch, p, x, state):
    w, u = p["W"].t(), p["U"].t()
    b = p["b_i"] + p["b_h"]
    h = state["h"]
    ys = []
    for x_t in x.unbind(0):
        h = torch.tanh(torch.mm(x_t, w) + torch.mm(h, u) + b)
        ys.append(h)
    return torch.stack(ys), {"h": h}


TORCH_CELLS = {"lstm": torch_lstm, "peephole": torch_peephole, "coupled": torch_coupled,
               "gru": torch_gru, "gru_cho": torch_gru_cho, "rnn": torch_rnn}


# ---------------------------------------------------------------------------------------------
# Plain NumPy cells (forward only): the obviously correct slow path.
# ---------------------------------------------------------------------------------------------

def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def numpy_lstm(p, x, state):
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x:
        i = _sigmoid(x_t @ p["W_i"].T + p["b_ii"] + h @ p["U_i"].T + p["b_hi"])
        f = _sigmoid(x_t @ p["W_f"].T + p["b_if"] + h @ p["U_f"].T + p["b_hf"])
        g = np.tanh(x_t @ p["W_g"].T + p["b_ig"] + h @ p["U_g"].T + p["b_hg"])
        o = _sigmoid(x_t @ p["W_o"].T + p["b_io"] + h @ p["U_o"].T + p["b_ho"])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def numpy_peephole(p, x, state):
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x:
        i = _sigmoid(x_t @ p["W_i"].T + h @ p["U_i"].T + p["p_i"] * c + p["b_i"])
        f = _sigmoid(x_t @ p["W_f"].T + h @ p["U_f"].T + p["p_f"] * c + p["b_f"])
        g = np.tanh(x_t @ p["W_g"].T + h @ p["U_g"].T + p["b_g"])
        c = f * c + i * g
        o = _sigmoid(x_t @ p["W_o"].T + h @ p["U_o"].T + p["p_o"] * c + p["b_o"])
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def numpy_coupled(p, x, state):
    h, c = state["h"], state["c"]
    ys = []
    for x_t in x:
        f = _sigmoid(x_t @ p["W_f"].T + h @ p["U_f"].T + p["b_f"])
        g = np.tanh(x_t @ p["W_g"].T + h @ p["U_g"].T + p["b_g"])
        o = _sigmoid(x_t @ p["W_o"].T + h @ p["U_o"].T + p["b_o"])
        c = f * c + (1 - f) * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def numpy_gru(p, x, state):
    h = state["h"]
    ys = []
    for x_t in x:
        r = _sigmoid(x_t @ p["W_r"].T + p["b_ir"] + h @ p["U_r"].T + p["b_hr"])
        z = _sigmoid(x_t @ p["W_z"].T + p["b_iz"] + h @ p["U_z"].T + p["b_hz"])
        n = np.tanh(x_t @ p["W_n"].T + p["b_in"] + r * (h @ p["U_n"].T + p["b_hn"]))
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys), {"h": h}


def numpy_gru_cho(p, x, state):
    h = state["h"]
    ys = []
    for x_t in x:
        r = _sigmoid(x_t @ p["W_r"].T + h @ p["U_r"].T + p["b_r"])
        z = _sigmoid(x_t @ p["W_z"].T + h @ p["U_z"].T + p["b_z"])
        n = np.tanh(x_t @ p["W_n"].T + (r * h) @ p["U_n"].T + p["b_n"])
        h = (1 - z) * h + z * n
        ys.append(h)
    return np.stack(ys), {"h": h}


def numpy_rnn(p, x, state):
    h = state["h"]
    ys = []
    for x_t in x:
        h = np.tanh(x_t @ p["W"].T + p["b_i"] + h @ p["U"].T + p["b_h"])
        ys.append(h)
    return np.stack(ys), {"h": h}


NUMPY_CELLS = {"lstm": numpy_lstm, "peephole": numpy_peephole, "coupled": numpy_coupled,
               "gru": numpy_gru, "gru_cho": numpy_gru_cho, "rnn": numpy_rnn}


# ---------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------

def _outputs(y, final, prefix="final_"):
    out = {"y": y}
    out.update({prefix + s: v for s, v in final.items()})
    return out


def _training_outputs(y, final, dx, dstate0, grads):
    """A training step's results by the names the runner compares (host arrays, states [B, H])."""
    out = _outputs(y, final)
    out["dx"] = dx
    out.update({f"dstate0_{s}": v for s, v in dstate0.items()})
    out.update({f"grad_{k}": g for k, g in grads.items()})
    return out


class SeqengineImpl:
    name = "seqengine"

    def __init__(self, cell, params, x, state0, dy, backend="cpu"):
        import seqengine as se
        T, B, D = x.shape
        H = dy.shape[2]
        self.rnn = se.RNN(cell, D, H, seed=0, dtype=np.float32, backend=backend)
        for k, v in params.items():
            self.rnn.params[k][...] = v
        self.x, self.dy = x, dy
        self.state0 = {s: v[None] for s, v in state0.items()}
        self.dfinal = {s: np.zeros_like(v) for s, v in self.state0.items()}

    def forward(self):
        self.rnn.eval()
        y, final = self.rnn.forward(self.x, self.state0)
        return _outputs(y, {s: v[0] for s, v in final.items()})

    def train_step(self):
        self.rnn.train()
        y, final = self.rnn.forward(self.x, self.state0)
        dx, dstate0 = self.rnn.backward(self.dy, self.dfinal)
        return _training_outputs(y, {s: v[0] for s, v in final.items()}, dx,
                                 {s: v[0] for s, v in dstate0.items()}, self.rnn.grads)


class _TorchBase:
    device = "cpu"   # the *-cuda subclasses run the same code on the GPU (cuDNN for torch.nn.LSTM/GRU)

    def __init__(self, cell, params, x, state0, dy):
        import torch
        self.torch = torch
        self.cell = cell
        if self.device == "cuda":   # float32 as float32: cuDNN's default TF32 products differ by ~1e-3
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.x = self._to(x)
        self.dy = self._to(dy)
        self.state0 = {s: self._to(v) for s, v in state0.items()}

    def _to(self, a: np.ndarray):
        return self.torch.from_numpy(a.copy()).to(self.device)

    def _leaf(self, t):
        return t.detach().clone().requires_grad_(True)


class TorchLoopImpl(_TorchBase):
    """The cell by hand, autograd, a Python loop over steps."""
    name = "torch-loop"

    def __init__(self, cell, params, x, state0, dy):
        super().__init__(cell, params, x, state0, dy)
        if cell not in TORCH_CELLS:
            raise Unsupported(f"no hand-written torch version of {cell!r}")
        self.fn = TORCH_CELLS[cell]
        self.params = {k: self._to(v) for k, v in params.items()}

    def forward(self):
        with self.torch.inference_mode():
            y, final = self.fn(self.torch, self.params, self.x, self.state0)
        return _outputs(y.cpu().numpy(), {s: v.cpu().numpy() for s, v in final.items()})

    def train_step(self):
        torch = self.torch
        p = {k: self._leaf(v) for k, v in self.params.items()}
        x = self._leaf(self.x)
        s0 = {s: self._leaf(v) for s, v in self.state0.items()}
        y, final = self.fn(torch, p, x, s0)
        torch.autograd.backward([y], [self.dy])
        return _training_outputs(y.detach().cpu().numpy(), {s: v.detach().cpu().numpy() for s, v in final.items()},
                                 x.grad.cpu().numpy(), {s: v.grad.cpu().numpy() for s, v in s0.items()},
                                 {k: v.grad.cpu().numpy() for k, v in p.items()})


# torch.nn.LSTM / GRU pack their gates in seqengine's gate order (lstm i,f,g,o; gru r,z,n).
_NATIVE = {
    "lstm": ("LSTM", ["i", "f", "g", "o"], lambda g: (f"W_{g}", f"U_{g}", f"b_i{g}", f"b_h{g}")),
    "gru": ("GRU", ["r", "z", "n"], lambda g: (f"W_{g}", f"U_{g}", f"b_i{g}", f"b_h{g}")),
}


class TorchNativeImpl(_TorchBase):
    """torch.nn.LSTM / torch.nn.GRU (oneDNN kernels on CPU)."""
    name = "torch-native"

    def __init__(self, cell, params, x, state0, dy):
        if cell not in _NATIVE:
            raise Unsupported(f"torch has no native {cell!r} layer")
        super().__init__(cell, params, x, state0, dy)
        torch = self.torch
        kind, gates, names = _NATIVE[cell]
        T, B, D = x.shape
        H = dy.shape[2]
        self.module = getattr(torch.nn, kind)(D, H).to(self.device)
        self.layout = [names(g) for g in gates]          # rows of weight_ih etc., block by block
        with torch.no_grad():
            for slot, k in (("weight_ih_l0", 0), ("weight_hh_l0", 1), ("bias_ih_l0", 2), ("bias_hh_l0", 3)):
                getattr(self.module, slot).copy_(self._to(
                    np.concatenate([params[n[k]] for n in self.layout], 0)))
        self.H = H

    def _state(self, s0):
        return (s0["h"][None], s0["c"][None]) if self.cell == "lstm" else s0["h"][None]

    def _final(self, hs):
        return {"h": hs[0][0], "c": hs[1][0]} if self.cell == "lstm" else {"h": hs[0]}

    def forward(self):
        with self.torch.inference_mode():
            y, hs = self.module(self.x, self._state(self.state0))
        return _outputs(y.cpu().numpy(), {s: v.cpu().numpy() for s, v in self._final(hs).items()})

    def train_step(self):
        torch = self.torch
        self.module.zero_grad(set_to_none=True)
        x = self._leaf(self.x)
        s0 = {s: self._leaf(v) for s, v in self.state0.items()}
        y, hs = self.module(x, self._state(s0))
        torch.autograd.backward([y], [self.dy])
        H, grads = self.H, {}
        for slot, k in (("weight_ih_l0", 0), ("weight_hh_l0", 1), ("bias_ih_l0", 2), ("bias_hh_l0", 3)):
            g = getattr(self.module, slot).grad.cpu().numpy()
            for blk, n in enumerate(self.layout):
                grads[n[k]] = g[blk * H:(blk + 1) * H]
        return _training_outputs(y.detach().cpu().numpy(),
                                 {s: v.detach().cpu().numpy() for s, v in self._final(hs).items()},
                                 x.grad.cpu().numpy(), {s: v.grad.cpu().numpy() for s, v in s0.items()}, grads)


class NumpyImpl:
    name = "numpy"

    def __init__(self, cell, params, x, state0, dy):
        if cell not in NUMPY_CELLS:
            raise Unsupported(f"no NumPy version of {cell!r}")
        self.fn, self.params, self.x, self.state0 = NUMPY_CELLS[cell], params, x, state0

    def forward(self):
        y, final = self.fn(self.params, self.x, self.state0)
        return _outputs(y, final)

    def train_step(self):
        raise Unsupported("the NumPy peer is forward only (no hand-written BPTT)")


class SeqengineCudaImpl:
    """The --gpu hook: the cell on `seqengine.backends.cuda`, on the same terms as the torch GPU peers:
    parameters, inputs and initial states live on the device (uploaded once, as the torch peers'
    tensors are), every result is copied back to the host (as they call ``.cpu()``), which synchronises."""
    name = "seqengine-cuda"

    def __init__(self, cell, params, x, state0, dy):
        import seqengine as se
        from numba import cuda
        self.cell = se.get_cell(cell)
        self.params = {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in params.items()}
        self.x, self.dy = cuda.to_device(x), cuda.to_device(dy)
        self.state0 = {s: cuda.to_device(v) for s, v in state0.items()}
        self.dfinal = {s: cuda.to_device(np.zeros_like(v)) for s, v in state0.items()}

    def forward(self):
        from seqengine import functional
        y, final, _ = functional.forward(self.cell, self.params, self.x, self.state0, training=False, backend="cuda")
        return _outputs(y.copy_to_host(), {s: v.copy_to_host() for s, v in final.items()})

    def train_step(self):
        from seqengine import functional
        y, final, tape = functional.forward(self.cell, self.params, self.x, self.state0, training=True,
                                            backend="cuda")
        dx, dstate0, grads = functional.backward(self.cell, self.params, tape, self.dy, self.dfinal, backend="cuda")

        def host(arrays):
            return {k: v.copy_to_host() for k, v in arrays.items()}
        return _training_outputs(y.copy_to_host(), host(final), dx.copy_to_host(), host(dstate0), host(grads))


class TorchNativeCudaImpl(TorchNativeImpl):
    """--gpu: torch.nn.LSTM / GRU on the GPU (cuDNN); outputs copied back, which synchronises."""
    name = "torch-native-cuda"
    device = "cuda"


class TorchLoopCudaImpl(TorchLoopImpl):
    """--gpu: the hand-written torch step loop on the GPU."""
    name = "torch-loop-cuda"
    device = "cuda"


GPU_IMPLS = ("seqengine-cuda", "torch-native-cuda", "torch-loop-cuda")
_CLASSES = {c.name: c for c in (SeqengineImpl, TorchNativeImpl, TorchLoopImpl, NumpyImpl, SeqengineCudaImpl,
                                TorchNativeCudaImpl, TorchLoopCudaImpl)}


def make_impl(name, cell, params, x, state0, dy):
    """An implementation ready to run, or `Unsupported` when it does not cover `cell`."""
    return _CLASSES[name](cell, params, x, state0, dy)


def supports(name: str, cell: str, mode: str) -> bool:
    if name in ("torch-native", "torch-native-cuda"):
        return cell in _NATIVE
    if name in ("torch-loop", "torch-loop-cuda"):
        return cell in TORCH_CELLS
    if name == "numpy":
        return cell in NUMPY_CELLS and mode == "forward"
    return True
