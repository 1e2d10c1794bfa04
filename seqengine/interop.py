"""PyTorch interop: torch.nn.LSTM / GRU / RNN state dicts <-> `RNN.params`.

torch stacks the gates of a layer in one matrix: ``weight_ih_l{k}{_reverse}`` [G*H, in] with row blocks in
the gate order below, ``weight_hh_l{k}`` [G*H, H], ``bias_ih_l{k}`` and ``bias_hh_l{k}`` [G*H]. The mapping
is a table per cell, and it is used only when the seqengine cell's equations are exactly the ones torch
computes (checked by equations hash), so a cell that merely shares a name is refused, not mis-mapped.
torch is imported only by `torch_state_dict`; loading accepts tensors or arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .cell import Cell


@dataclass(frozen=True)
class TorchMapping:
    module: str                      # the torch.nn class
    gates: tuple[str, ...]           # row blocks of weight_ih / weight_hh / bias_ih / bias_hh, in torch's order
    W: str                           # seqengine names, "{g}" replaced by the gate
    U: str
    b_ih: str
    b_hh: str
    reference: Cell                  # torch's equations in seqengine's language


MAPPINGS = {
    "lstm": TorchMapping("LSTM", ("i", "f", "g", "o"), "W_{g}", "U_{g}", "b_i{g}", "b_h{g}", Cell(
        name="lstm", state=["h", "c"], equations="""
            i = sigmoid(W_i @ x + b_ii + U_i @ h_prev + b_hi)
            f = sigmoid(W_f @ x + b_if + U_f @ h_prev + b_hf)
            g = tanh(W_g @ x + b_ig + U_g @ h_prev + b_hg)
            o = sigmoid(W_o @ x + b_io + U_o @ h_prev + b_ho)
            c = f * c_prev + i * g
            h = o * tanh(c)
        """)),
    "gru": TorchMapping("GRU", ("r", "z", "n"), "W_{g}", "U_{g}", "b_i{g}", "b_h{g}", Cell(
        name="gru", state=["h"], equations="""
            r = sigmoid(W_r @ x + b_ir + U_r @ h_prev + b_hr)
            z = sigmoid(W_z @ x + b_iz + U_z @ h_prev + b_hz)
            n = tanh(W_n @ x + b_in + r * (U_n @ h_prev + b_hn))
            h = (1 - z) * n + z * h_prev
        """)),
    "rnn": TorchMapping("RNN", ("",), "W", "U", "b_i", "b_h", Cell(
        name="rnn", state=["h"], equations="""
            h = tanh(W @ x + b_i + U @ h_prev + b_h)
        """)),
}


def mapping_for(rnn) -> TorchMapping:
    cell = rnn.cell
    m = MAPPINGS.get(cell.name)
    if m is None:
        raise ValueError(f"torch interop covers the cells {sorted(MAPPINGS)} (torch.nn.LSTM, GRU, RNN); "
                         f"cell {cell.name!r} has no torch counterpart")
    if cell.equations_hash() != m.reference.equations_hash():
        raise ValueError(f"cell {cell.name!r} does not compute torch.nn.{m.module}'s equations (its equations "
                         f"hash differs from torch's), so torch's weights cannot be mapped onto it")
    return m


def _torch_keys(rnn, k: int, reverse: bool) -> dict[str, str]:
    suffix = f"_l{k}{'_reverse' if reverse else ''}"
    return {part: f"{part}{suffix}" for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def _blocks(rnn, m: TorchMapping, k: int, reverse: bool) -> dict[str, list[str]]:
    """torch key part -> the seqengine parameter names of its row blocks, in order."""
    name = lambda pattern, g: rnn.param_name(pattern.format(g=g), k, reverse)   # noqa: E731
    return {"weight_ih": [name(m.W, g) for g in m.gates], "weight_hh": [name(m.U, g) for g in m.gates],
            "bias_ih": [name(m.b_ih, g) for g in m.gates], "bias_hh": [name(m.b_hh, g) for g in m.gates]}


def _directions(rnn):
    return (False, True) if rnn.bidirectional else (False,)


def to_torch_arrays(rnn, arrays: dict | None = None) -> "OrderedDict[str, np.ndarray]":
    """`arrays` (default `rnn.params`; `rnn.grads` works too) under torch's keys, as NumPy arrays."""
    m = mapping_for(rnn)
    arrays = rnn.params if arrays is None else arrays
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k in range(rnn.num_layers):
        for reverse in _directions(rnn):
            keys = _torch_keys(rnn, k, reverse)
            for part, names in _blocks(rnn, m, k, reverse).items():
                out[keys[part]] = np.concatenate([arrays[n] for n in names], axis=0)
    return out


def torch_state_dict(rnn) -> "OrderedDict":
    """`rnn.params` as a state dict that `torch.nn.<LSTM|GRU|RNN>(...).load_state_dict` accepts (strict)."""
    import torch
    return OrderedDict((key, torch.from_numpy(a.copy())) for key, a in to_torch_arrays(rnn).items())


def _as_numpy(key: str, value) -> np.ndarray:
    if hasattr(value, "detach"):          # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.dtype.kind != "f":
        raise TypeError(f"state_dict[{key!r}] must be a floating-point tensor; got dtype {value.dtype}")
    return value


def load_torch_state_dict(rnn, state_dict) -> None:
    """Split torch's stacked gate blocks into `rnn.params` (cast to rnn.dtype). The keys must match this
    RNN's num_layers and bidirectional exactly; a module built with bias=False (no bias keys) loads zero
    biases. Nothing is changed unless every key and shape checks out."""
    m = mapping_for(rnn)
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict must be a mapping such as torch.nn.{m.module}(...).state_dict(); "
                        f"got {type(state_dict).__name__}")
    H, G = rnn.hidden_size, len(m.gates)
    expected: dict[str, tuple[tuple[int, ...], list[str]]] = {}
    for k in range(rnn.num_layers):
        for reverse in _directions(rnn):
            keys = _torch_keys(rnn, k, reverse)
            d_in = rnn.params[rnn.param_name(m.W.format(g=m.gates[0]), k, reverse)].shape[1]
            shapes = {"weight_ih": (G * H, d_in), "weight_hh": (G * H, H), "bias_ih": (G * H,),
                      "bias_hh": (G * H,)}
            for part, names in _blocks(rnn, m, k, reverse).items():
                expected[keys[part]] = (shapes[part], names)
    given = set(state_dict.keys())
    has_bias = any(key.startswith("bias_") for key in given)
    required = {key for key in expected if has_bias or not key.startswith("bias_")}
    missing, unexpected = sorted(required - given), sorted(given - set(expected))
    if missing or unexpected:
        hint = ""
        if any("weight_hr" in key for key in unexpected):
            hint = " (proj_size is not supported)"
        raise ValueError(f"state_dict does not fit this RNN (torch.nn.{m.module} with num_layers="
                         f"{rnn.num_layers}, bidirectional={rnn.bidirectional}, hidden_size={H}){hint}: "
                         f"missing keys {missing}, unexpected keys {unexpected}")
    new: dict[str, np.ndarray] = {}
    for key, (shape, names) in expected.items():
        if key not in given:                          # bias=False
            for n in names:
                new[n] = np.zeros((H,), rnn.dtype)
            continue
        a = _as_numpy(key, state_dict[key])
        if a.shape != shape:
            raise ValueError(f"state_dict[{key!r}] must have shape {list(shape)} (gates {', '.join(m.gates) or '-'}"
                             f" stacked, hidden_size={H}); got {list(a.shape)}")
        for j, n in enumerate(names):
            new[n] = np.ascontiguousarray(a[j * H:(j + 1) * H], dtype=rnn.dtype)
    for n in rnn.params:                              # keep the order of `params`
        rnn.params[n][...] = new[n]   # in place: keeps the stacked storage the kernels use without copies
