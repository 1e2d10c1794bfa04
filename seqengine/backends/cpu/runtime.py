"""Drive one cell's generated CPU kernels: pack weights, run the hoisted and
deferred GEMMs and the time-loop kernels. One thread pool only: Numba's. BLAS
is held to one thread for the whole call and the big GEMMs split their rows
over Numba threads (`gemm.py`).

Forward (training), for G_x products with x and in-loop groups g:
    x_proj = x @ [W_1; ...; W_Gx]^T                      # [T*B, D] @ [D, Gx*H]
    kernel: per step, prod_g = operand_g @ weightT_g and the fused pointwise loops
Backward:
    kernel: reverse loop writing d_x_proj [T, B, Gx*H] and d_prod_g [T, B, k*H]
    dW_x = d_x_proj^T @ x,  dx = d_x_proj @ W_x,  dU_g = d_prod_g^T @ operand_g
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from ...compiler.schedule import Schedule
from . import gemm
from .threads import single_threaded_blas


@dataclass
class Tape:
    """What backward needs from a training forward (arrays by kernel name)."""
    x: np.ndarray                     # [T, B, D]
    arrays: dict[str, np.ndarray]     # x_proj, state_<s>, saved_<v>, param_<p>
    chunks: np.ndarray
    consumed: bool = False
    extra: dict = field(default_factory=dict)


def _chunks(batch: int) -> np.ndarray:
    """Row bounds giving each Numba thread one contiguous slice of the batch."""
    n = max(1, min(numba.get_num_threads(), batch))
    return (np.arange(n + 1, dtype=np.int64) * batch) // n


class CpuKernels:
    def __init__(self, sched: Schedule, module, dtype: np.dtype):
        self.sched, self.module, self.dtype = sched, module, np.dtype(dtype)
        self.arg_names = {k: getattr(module, k.upper() + "_ARGS") for k in ("forward_train", "forward_infer",
                                                                          "backward")}

    # -- weight packing ----------------------------------------------------------
    def _stack(self, params, names) -> np.ndarray:
        return np.concatenate([params[m] for m in names], axis=0)    # [k*H, in]

    def _x_weights(self, params) -> np.ndarray | None:
        g = self.sched.x_group
        return None if g is None else self._stack(params, g.matrices)

    # -- forward -----------------------------------------------------------------
    def forward(self, params: dict, x: np.ndarray, state0: dict, training: bool, lengths: np.ndarray | None = None):
        """x [T, B, D], state0 {s: [B, H]}, lengths [B] (1..T; None: all T)
        -> y [T, B, H] (zero past each length), final {s: [B, H]} (at each sequence's last step), Tape or None.
        """
        s, dt = self.sched, self.dtype
        T, B, D = x.shape
        H = next(iter(state0.values())).shape[1]
        chunks = _chunks(B)
        nc, bc = len(chunks) - 1, int(math.ceil(B / (len(chunks) - 1)))
        if lengths is None:
            lengths = np.full(B, T, np.int64)
        elif lengths.min() < T:   # padding never reaches the weight GEMMs, even if it is NaN
            x = np.where(np.arange(T)[:, None, None] < lengths[None, :, None], x, 0).astype(dt)
        arrays: dict[str, np.ndarray] = {"chunks": chunks, "lengths": lengths}

        w_x = self._x_weights(params)                                    # [Gx*H, D]
        if w_x is None:
            arrays["x_proj"] = np.empty((T, B, 0), dt)
        else:
            with single_threaded_blas():                                 # hoisted: all steps at once
                x_proj = gemm.rows(x.reshape(T * B, D), np.ascontiguousarray(w_x.T))
            arrays["x_proj"] = x_proj.reshape(T, B, -1)
        slots = T + 1 if training else 2
        for st in s.states:
            a = np.empty((slots, B, H), dt)
            a[0] = state0[st]
            arrays[f"state_{st}"] = a
        for grp in s.groups:
            arrays[f"weightT_{grp.name}"] = np.ascontiguousarray(self._stack(params, grp.matrices).T)
            arrays[f"prod_{grp.name}"] = np.empty((nc, bc, len(grp.members) * H), dt)
        for p in s.graph.vectors:
            arrays[f"param_{p}"] = params[p]
        kernel = "forward_train" if training else "forward_infer"
        for name in self.arg_names[kernel]:
            if name == "y" or name.startswith("saved_"):
                arrays[name] = np.empty((T, B, H), dt)
            elif name.startswith("value_"):
                arrays[name] = np.empty((nc, bc, H), dt)
        with single_threaded_blas():
            getattr(self.module, kernel)(*[arrays[n] for n in self.arg_names[kernel]])

        out = s.graph.output
        if training and out in s.graph.new_state.values():
            st = next(k for k, v in s.graph.new_state.items() if v == out)
            y = arrays[f"state_{st}"][1:]
        else:
            y = arrays["y"]
        if training:   # each sequence's state at its own last step
            final = {st: arrays[f"state_{st}"][lengths, np.arange(B)] for st in s.states}
        else:          # the kernel carried finished sequences' states to slot T & 1
            final = {st: arrays[f"state_{st}"][T & 1].copy() for st in s.states}
        if s.x_shares_adjoint_with is not None:
            del arrays["x_proj"]   # not needed by backward, and not even as a buffer: free it now
        tape = Tape(x, arrays, chunks) if training else None
        return y, final, tape

    # -- backward ----------------------------------------------------------------
    def backward(self, params: dict, tape: Tape, dy: np.ndarray, dfinal: dict):
        """dy [T, B, H], dfinal {s: [B, H]} -> dx [T, B, D], dstate0 {s: [B, H]}, grads {param: array}."""
        s, dt, a = self.sched, self.dtype, dict(tape.arrays)
        x = tape.x
        T, B, D = x.shape
        H = a[f"state_{s.states[0]}"].shape[2]
        chunks = tape.chunks
        nc, bc = len(chunks) - 1, int(math.ceil(B / (len(chunks) - 1)))
        a["d_y"] = dy
        for st in s.states:
            a[f"d_final_{st}"] = dfinal[st]
            a[f"d_init_{st}"] = np.empty((B, H), dt)
            a[f"d_state_{st}"] = np.empty((2, nc, bc, H), dt)
        for grp in s.groups:
            a[f"d_prod_{grp.name}"] = np.empty((T, B, len(grp.members) * H), dt)
            a[f"weight_{grp.name}"] = self._stack(params, grp.matrices)
        if s.x_shares_adjoint_with is not None:   # the x products' adjoints equal that group's, block by block
            a["d_x_proj"] = a[f"d_prod_{s.x_shares_adjoint_with.name}"]
        else:                                     # backward never reads the x products: reuse their memory
            a["d_x_proj"] = a["x_proj"]
        a["d_params"] = np.zeros((nc, len(s.graph.vectors), H), dt)
        for name in self.arg_names["backward"]:
            if name.startswith(("d_gemm_", "d_cross_", "d_operand_")):
                a[name] = np.empty((nc, bc, H), dt)
        grads = {name: np.zeros_like(p) for name, p in params.items()}
        with single_threaded_blas():
            self.module.backward(*[a[n] for n in self.arg_names["backward"]])
            d_x_proj = a["d_x_proj"].reshape(T * B, -1)                  # [T*B, Gx*H]
            if s.x_group is not None:                                    # deferred: all steps at once
                x2 = x.reshape(T * B, D)
                self._scatter(grads, s.x_group.matrices, gemm.tn(d_x_proj, x2), H)
                dx = gemm.rows(d_x_proj, self._x_weights(params)).reshape(T, B, D)
            else:
                dx = np.zeros_like(x)
            for grp in s.groups:
                if grp.kind == "state":
                    operand = a[f"state_{s.graph.nodes[grp.operand].attr}"][:T]   # [T, B, H] states 0..T-1
                else:
                    operand = a[f"saved_{self._saved_name(grp.operand)}"]
                d_prod = a[f"d_prod_{grp.name}"].reshape(T * B, -1)        # [T*B, k*H]
                self._scatter(grads, grp.matrices, gemm.tn(d_prod, operand.reshape(T * B, -1)), H)
        d_params = a["d_params"].sum(axis=0)                             # [P, H]
        for k, p in enumerate(s.graph.vectors):
            grads[p] += d_params[k]
        dstate0 = {st: a[f"d_init_{st}"] for st in s.states}
        return dx, dstate0, grads

    def _saved_name(self, i: int) -> str:
        g = self.sched.graph
        named = {v: k for k, v in g.names.items()}
        return named[i] if i in named else f"v{i}"

    @staticmethod
    def _scatter(grads, matrices, stacked, H):
        for k, m in enumerate(matrices):
            grads[m] += stacked[k * H:(k + 1) * H]
