"""Drive one cell's generated CPU kernels: pack weights, run the hoisted and
deferred GEMMs and the time-loop kernels. One thread pool only: Numba's. BLAS
is held to one thread for the whole call and the big GEMMs split their rows
over Numba threads (`gemm.py`).

Forward (training), for G_x products with x and in-loop groups g:
    x_proj = x @ [W_1; ...; W_Gx]^T                      # [T*B, D] @ [D, Gx*H]
    kernel: per step, prod_g = operand_g @ weight_g^T and the fused pointwise loops
Backward:
    kernel: reverse loop writing d_x_proj [T, B, Gx*H] and d_prod_g [T, B, k*H]
    dW_x = d_x_proj^T @ x,  dx = d_x_proj @ W_x,  dU_g = d_prod_g^T @ operand_g
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numba
import numpy as np

from ...compiler.schedule import Schedule
from . import gemm, team, tiles, workspace
from .threads import single_threaded_blas


@dataclass
class Tape:
    """What backward needs from a training forward (arrays by kernel name)."""
    x: np.ndarray                     # [T, B, D]
    arrays: dict[str, np.ndarray]     # x_proj, state_<s>, saved_<v>, param_<p>
    chunks: np.ndarray
    consumed: bool = False
    extra: dict = field(default_factory=dict)


# x_proj and the product adjoints d_prod are kept for a window of steps, not all T: at most
# WINDOW_BYTES each (or one step), so a long sequence's training step needs little beyond its tape
# (LSTM at (T, B, H) = (1000, 64, 512): x_proj and d_prod were 500 MiB each next to a 750 MiB tape),
# and backward's dx and weight gradients read a window's adjoints and operands while the step kernel
# has just left them in cache. But each window adds into the [k*H, in] weight gradients once more, so
# a window is at least long enough to read WINDOW_MIN_REUSE times their bytes of adjoints and operands.
# Training steps, 16 MiB windows -> 4 MiB (four alternated process pairs, ms): gru_cho 100x64x256
# 37.8 / 38.2 / 37.9 / 36.2 -> 37.5 / 36.9 / 35.4 / 35.2, lstm 100x64x256 50.1 / 47.4 / 49.5 / 45.6 ->
# 49.9 / 46.6 / 44.6 / 44.7; but lstm 50x16x512 (8 MiB of weight gradients) 26.2 / 24.6 / 23.3 / 23.4
# -> 27.2 / 24.8 / 24.4 / 24.1, which the minimum keeps in one window (RESULTS.md, session 6).
WINDOW_BYTES = 4 * 2 ** 20
WINDOW_MIN_REUSE = 4


# Calls of at least this many steps pack each weight once into panels for the register-block GEMM
# kernel (tiles.gemm_packed); shorter ones use the dot-form tiles on the weight as it is.
PACK_MIN_STEPS = 4


# Below this many multiply-adds per call, one thread runs all rows: a parallel region costs more
# than it saves (and a thread woken on a busy machine can make it cost milliseconds). The same
# threshold as the GEMMs outside the kernels.
SERIAL_WORK = gemm.SERIAL_WORK


# Hidden units split over a team (one parallel region whose members meet once per segment of a step,
# team.py) instead of batch rows, with at least TEAM_MIN_STEPS steps (to repay starting it) and whole
# panels of each weight per member:
# - inference with fewer than TEAM_MAX_ROWS_PER_THREAD rows per thread: streaming LSTM (1000 x 1 x 256),
#   each member's half of U stays in its L2 (1 MiB of U from L3 each step: 8.6 us; half from L2: 3.8);
# - training and inference with at most TEAM_TRAIN_MAX_ROWS_PER_THREAD rows per thread and in-loop
#   weights of at least TEAM_TRAIN_MIN_WEIGHT_BYTES: split by rows, every thread streams all of U from L3
#   (LSTM 50 x 16 x 512, U 4 MiB: per-step products 335 GFLOP/s by rows, 460 by units; at 100 x 64 x 256,
#   1 MiB, 473 vs 491; at 100 x 32 x 128 rows win, 490 vs 430).
TEAM_MAX_ROWS_PER_THREAD = 2
TEAM_TRAIN_MAX_ROWS_PER_THREAD = 8
TEAM_TRAIN_MIN_WEIGHT_BYTES = 2 * 2 ** 20
TEAM_MIN_STEPS = 16


def _team_units(training: bool, T: int, B: int, H: int, panel: int, weight_bytes: int) -> np.ndarray | None:
    """Hidden-unit bounds [n + 1] of each team member (whole panels), or None: split rows instead."""
    if T < TEAM_MIN_STEPS or H % panel or not team.usable():
        return None
    n = min(numba.get_num_threads(), team.cores())
    if n < 2 or H // panel < n:
        return None
    big_weights = B <= TEAM_TRAIN_MAX_ROWS_PER_THREAD * n and weight_bytes >= TEAM_TRAIN_MIN_WEIGHT_BYTES
    if not (big_weights or (not training and B < TEAM_MAX_ROWS_PER_THREAD * n)):
        return None
    panels = H // panel
    return np.array([c * panels // n * panel for c in range(n + 1)], np.int64)


def _chunks(batch: int, work: float) -> np.ndarray:
    """Row bounds giving each Numba thread one contiguous slice of the batch."""
    n = 1 if work < SERIAL_WORK else max(1, min(numba.get_num_threads(), batch))
    return (np.arange(n + 1, dtype=np.int64) * batch) // n


class CpuKernels:
    def __init__(self, sched: Schedule, module, dtype: np.dtype):
        self.sched, self.module, self.dtype = sched, module, np.dtype(dtype)
        kernels = ("forward_train", "forward_infer", "backward")
        self.arg_names = {k: getattr(module, k.upper() + "_ARGS") for k in kernels + tuple(k + "_team" for k in kernels)}
        self._scratch = threading.local()   # inference buffers reused across calls (streaming steps)

    # -- weight packing ----------------------------------------------------------
    @staticmethod
    def _stack(params, names) -> np.ndarray:
        """[k*H, in]: the matrices of a group stacked. `functional.init_params` stores them as views
        of one such array, which is then used as it is (no copy per call); otherwise they are copied."""
        first = params[names[0]]
        base = first.base
        if (base is not None and isinstance(base, np.ndarray) and base.ndim == 2 and base.flags.c_contiguous
                and base.dtype == first.dtype and base.shape == (len(names) * first.shape[0], first.shape[1])):
            start, step = base.ctypes.data, first.nbytes
            if all(params[m].base is base and params[m].ctypes.data == start + k * step
                   and params[m].flags.c_contiguous for k, m in enumerate(names)):
                return base
        return np.concatenate([params[m] for m in names], axis=0)

    def _x_weights(self, params) -> np.ndarray | None:
        g = self.sched.x_group
        return None if g is None else self._stack(params, g.matrices)

    def _launch(self, kernel: str, arrays: dict, chunks: np.ndarray):
        args = [arrays[n] for n in self.arg_names[kernel]]
        with single_threaded_blas():
            if len(chunks) == 2:   # one chunk: no parallel region at all
                getattr(self.module, kernel + "_rows")(0, chunks[0], chunks[1], *args[1:])
            else:
                getattr(self.module, kernel)(*args)

    def _launch_team(self, kernel: str, arrays: dict, units: np.ndarray, carried: list[str]) -> bool:
        """Steps t0:t1 of `kernel` on a team splitting hidden units. False if the team gave up: the
        `carried` arrays (what the kernel carries from window to window) are then as they were, for the
        caller to run the row-split kernel instead."""
        start = {name: arrays[name].copy() for name in carried}
        arrays["units"], arrays["sync"], arrays["limit"] = units, team.new_sync(), team.LIMIT
        with single_threaded_blas():
            getattr(self.module, kernel + "_team")(*[arrays[n] for n in self.arg_names[kernel + "_team"]])
        if arrays["sync"][team.ABORTED] == 0:
            return True
        team.give_up()
        for name, value in start.items():
            arrays[name][...] = value
        return False

    def _team_units(self, training: bool, T: int, B: int, H: int) -> np.ndarray | None:
        weight_bytes = sum(len(g.members) * H * H for g in self.sched.groups) * self.dtype.itemsize
        return _team_units(training, T, B, H, tiles.panel_width(self.dtype.itemsize), weight_bytes)

    def _weight_elements(self, D: int, H: int) -> int:
        """Elements of the GEMM weights, [Gx*H, D] and each group's [k*H, H] (= of their gradients)."""
        s = self.sched
        return H * ((len(s.x_group.members) * D if s.x_group else 0) + sum(len(g.members) * H for g in s.groups))

    def _work(self, T: int, B: int, D: int, H: int) -> float:
        """Multiply-adds of the GEMMs of one forward (decides serial vs parallel)."""
        return float(T) * B * self._weight_elements(D, H)

    def _step_bytes(self, B: int, H: int) -> int:
        """Bytes of one step of the largest of x_proj / d_x_proj / d_prod_<g>."""
        s = self.sched
        cols = max([len(s.x_group.members) if s.x_group else 0] + [len(g.members) for g in s.groups])
        return max(1, B * cols * H * self.dtype.itemsize)

    def _gradient_traffic(self, B: int, D: int, H: int) -> tuple[int, int]:
        """(bytes of the weight gradients, bytes of adjoints and operands their GEMMs read per step)."""
        s, item = self.sched, self.dtype.itemsize
        read = sum((len(g.members) + 1) * H for g in s.groups)        # each group's adjoint and operand
        if s.x_group:                                                 # x, and d_x_proj unless groups' d_prods
            read += D + (0 if s.x_adjoint_groups else len(s.x_group.members) * H)
        return self._weight_elements(D, H) * item, max(1, B * read * item)

    def _window(self, T: int, B: int, D: int, H: int) -> int:
        """Steps per window of x_proj / d_x_proj / d_prod: as many as fit in WINDOW_BYTES, but at least
        WINDOW_MIN_REUSE times the weight gradients' bytes of their GEMMs' reads; all T if that is fewer."""
        steps = max(1, WINDOW_BYTES // self._step_bytes(B, H))
        if WINDOW_MIN_REUSE:
            gradients, per_step = self._gradient_traffic(B, D, H)
            steps = max(steps, -(-WINDOW_MIN_REUSE * gradients // per_step))
        return min(T, steps)

    def _buffers(self, training: bool, T: int, B: int, D: int, H: int, nc: int, bc: int) -> dict:
        """Scratch of one forward: fresh in training (the tape keeps it), reused in inference."""
        key = (T, B, D, H, nc)
        cache = self._scratch.__dict__.setdefault("buffers", {})   # a few shapes: one per layer of a stack
        if not training and key in cache:
            return cache[key]
        s, dt = self.sched, self.dtype
        gx = len(s.x_group.members) if s.x_group else 0
        W = self._window(T, B, D, H)
        arrays = {"x_proj": workspace.empty((W, B, gx * H), dt), "full_lengths": np.full(B, T, np.int64)}
        for st in s.states:
            arrays[f"state_{st}"] = workspace.empty((T + 1 if training else 2, B, H), dt)
        for grp in s.groups:
            arrays[f"prod_{grp.name}"] = workspace.empty((nc, bc, len(grp.members) * H), dt)
        for name in self.arg_names["forward_train" if training else "forward_infer"]:
            if name.startswith("saved_"):
                arrays[name] = workspace.empty((T, B, H), dt)
            elif name.startswith("value_"):
                arrays[name] = np.empty((nc, bc, H), dt)
        if not training:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = arrays
        return arrays

    # -- forward -----------------------------------------------------------------
    def forward(self, params: dict, x: np.ndarray, state0: dict, training: bool, lengths: np.ndarray | None = None):
        """x [T, B, D], state0 {s: [B, H]}, lengths [B] (1..T; None: all T)
        -> y [T, B, H] (zero past each length), final {s: [B, H]} (at each sequence's last step), Tape or None.
        """
        with single_threaded_blas():
            return self._forward(params, x, state0, training, lengths)

    def _forward(self, params, x, state0, training, lengths):
        s, dt = self.sched, self.dtype
        if not x.flags.writeable:   # Numba types read-only arrays apart: in one tuple with the (writable)
            x = x.copy()            # states, backward's weight GEMM operands would not compile
        T, B, D = x.shape
        H = next(iter(state0.values())).shape[1]
        units = self._team_units(training, T, B, H)
        chunks = _chunks(B, 0 if units is not None else self._work(T, B, D, H))   # a team: one chunk of all rows
        nc, bc = len(chunks) - 1, int(math.ceil(B / (len(chunks) - 1)))
        arrays = dict(self._buffers(training, T, B, D, H, nc, bc))
        arrays["chunks"] = chunks
        if lengths is None:
            lengths = arrays["full_lengths"]
        elif lengths.min() < T:   # padding never reaches the weight GEMMs, even if it is NaN
            x = np.where(np.arange(T)[:, None, None] < lengths[None, :, None], x, 0).astype(dt)
        arrays["lengths"] = lengths

        w_x = self._x_weights(params)                                    # [Gx*H, D]
        for st in s.states:
            arrays[f"state_{st}"][0] = state0[st]
        for grp in s.groups:
            weight = arrays[f"weight_{grp.name}"] = self._stack(params, grp.matrices)      # [k*H, in]
            # packed in panels for the register-block kernel when enough steps use it (a one-step
            # streaming call multiplies with the dot-form tiles instead of packing U each time)
            arrays[f"weight_p_{grp.name}"] = (tiles.packed(weight, workspace.empty) if T >= PACK_MIN_STEPS
                                              else tiles.no_panels(weight.shape[1], dt))
        for p in s.graph.vectors:
            arrays[f"param_{p}"] = params[p]
        kernel = "forward_train" if training else "forward_infer"
        if "y" in self.arg_names[kernel]:
            arrays["y"] = workspace.empty((T, B, H), dt)                # an output: always a new array
        W = arrays["x_proj"].shape[0]
        x_panels = gemm.panels(w_x, W * B) if w_x is not None else None   # packed once for all windows
        carried = [] if training else [f"state_{st}" for st in s.states]           # inference: 2 slots
        for t0 in range(0, T, W):                                        # windows of steps
            t1 = min(T, t0 + W)
            if w_x is not None:                                          # hoisted: all steps of the window at once
                gemm.nt(x[t0:t1].reshape(-1, D), w_x, out=arrays["x_proj"][:t1 - t0].reshape((t1 - t0) * B, -1),
                        Bp=x_panels)
            arrays["t0"], arrays["t1"] = t0, t1
            if units is None or not self._launch_team(kernel, arrays, units, carried):
                self._launch(kernel, arrays, chunks)

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
        if s.x_adjoint_groups:
            del arrays["x_proj"]   # not needed by backward, and not even as a buffer: free it now
        for grp in s.groups:       # backward packs the weights in its own layout: the forward's panels go
            del arrays[f"weight_p_{grp.name}"]   # back to the pool now, for backward's to reuse
        tape = Tape(x, arrays, chunks, extra={"units": units}) if training else None
        return y, final, tape

    # -- backward ----------------------------------------------------------------
    def backward(self, params: dict, tape: Tape, dy: np.ndarray, dfinal: dict):
        """dy [T, B, H], dfinal {s: [B, H]} -> dx [T, B, D], dstate0 {s: [B, H]}, grads {param: array}."""
        with single_threaded_blas():
            return self._backward(params, tape, dy, dfinal)

    def _backward(self, params, tape, dy, dfinal):
        s, dt, a = self.sched, self.dtype, dict(tape.arrays)
        if not dy.flags.writeable:  # a read-only dy would compile a second backward kernel (seconds)
            dy = dy.copy()
        x = tape.x
        T, B, D = x.shape
        H = a[f"state_{s.states[0]}"].shape[2]
        units = tape.extra.get("units")              # a team in forward: one in backward too (with a team
        chunks = tape.chunks                         # forward only, the step was 5% slower than all rows)
        nc, bc = len(chunks) - 1, int(math.ceil(B / (len(chunks) - 1)))
        a["d_y"] = dy
        W = self._window(T, B, D, H)
        for st in s.states:
            a[f"d_final_{st}"] = dfinal[st]
            a[f"d_init_{st}"] = workspace.empty((B, H), dt)
            a[f"d_state_{st}"] = np.empty((2, nc, bc, H), dt)
        for grp in s.groups:
            a[f"d_prod_{grp.name}"] = workspace.empty((W, B, len(grp.members) * H), dt)
            weight = self._stack(params, grp.matrices)                                   # [k*H, in]
            a[f"weight_t_{grp.name}"] = weight.T                                         # [in, k*H] view
            a[f"weight_tp_{grp.name}"] = (tiles.packed_columns(weight, workspace.empty) if T >= PACK_MIN_STEPS
                                          else tiles.no_panels(weight.shape[0], dt))
        if s.x_adjoint_groups:   # the x products' adjoints are those groups' d_prods side by side: the
            a["d_x_proj"] = a[f"d_prod_{s.x_adjoint_groups[0].name}"]   # kernel writes no d_x_proj
        else:                    # backward never reads the x products: reuse their memory
            a["d_x_proj"] = a["x_proj"]
        a["d_params"] = np.zeros((nc, len(s.graph.vectors), H), dt)
        for name in self.arg_names["backward"]:
            if name.startswith(("d_gemm_", "d_cross_", "d_operand_")):
                a[name] = np.empty((nc, bc, H), dt)
        # the gradients of a group's matrices are row blocks of one [k*H, in] array, which the weight
        # GEMMs write (first window) or add to (later windows) directly
        stacked_grads = {}                                               # group matrices -> [k*H, in]
        for grp in ([s.x_group] if s.x_group is not None else []) + list(s.groups):
            first = params[grp.matrices[0]]
            stacked_grads[tuple(grp.matrices)] = (workspace.empty if T else workspace.zeros)(
                (len(grp.matrices) * first.shape[0], first.shape[1]), dt)
        grads = {}
        for matrices, stacked in stacked_grads.items():
            for k, m in enumerate(matrices):
                grads[m] = stacked[k * H:(k + 1) * H]
        grads.update({name: workspace.zeros(p.shape, p.dtype) for name, p in params.items() if name not in grads})
        # weight gradients, per window: adjoint^T @ operand, one call per adjoint array (the x products
        # and a group that shares their adjoint transpose it once for both)
        products = {}                # id(adjoint) -> (adjoint [W, B, k*H], [(operand [T, B, in], gradient rows)])
        # (adjoint [W, B, k*H], rows lo:hi of W_x): the x products' adjoints (none without x products)
        x_parts = [(a[name], lo, hi) for name, lo, hi in s.x_adjoint_sources(H)]
        if s.x_group is not None:
            x_grads = stacked_grads[tuple(s.x_group.matrices)]
            for adjoint, lo, hi in x_parts:
                products.setdefault(id(adjoint), (adjoint, []))[1].append((x, x_grads[lo:hi]))
            w_x = self._x_weights(params)                                # [Gx*H, D]
            w_x_panels = gemm.column_panels(w_x, W * B)                  # dx = d_x_proj @ W_x, packed once
            dx = workspace.empty(x.shape, x.dtype)
        else:
            dx = workspace.zeros(x.shape, x.dtype)
        for grp in s.groups:
            if grp.kind == "state":
                operand = a[f"state_{s.graph.nodes[grp.operand].attr}"][:T]   # [T, B, H] states 0..T-1
            else:
                operand = a[f"saved_{self._saved_name(grp.operand)}"]
            adjoint = a[f"d_prod_{grp.name}"]
            products.setdefault(id(adjoint), (adjoint, []))[1].append((operand, stacked_grads[tuple(grp.matrices)]))
        carried = ([f"d_state_{st}" for st in s.states] + ["d_params"]         # from window to window
                   + [n for n in self.arg_names["backward"] if n.startswith("d_gemm_")])
        for t0 in reversed(range(0, T, W)):                              # windows, last first
            t1 = min(T, t0 + W)
            n = (t1 - t0) * B
            a["t0"], a["t1"] = t0, t1
            if units is None or not self._launch_team("backward", a, units, carried):
                self._launch("backward", a, chunks)
            for k, (adjoint, lo, hi) in enumerate(x_parts):              # dx = sum of d_x_proj blocks @ W_x rows
                gemm.rows(adjoint[:t1 - t0].reshape(n, -1), w_x[lo:hi], out=dx[t0:t1].reshape(n, D),
                          Bp=w_x_panels[:, lo:hi], accumulate=k > 0)
            for adjoint, uses in products.values():
                gemm.tn_many(adjoint[:t1 - t0].reshape(n, -1), [op[t0:t1].reshape(n, -1) for op, _ in uses],
                             outs=[out for _, out in uses], accumulate=t1 < T)
        d_params = a["d_params"].sum(axis=0)                             # [P, H]
        for k, p in enumerate(s.graph.vectors):
            grads[p] += d_params[k]
        dstate0 = {st: a[f"d_init_{st}"] for st in s.states}
        return dx, dstate0, grads

    def _saved_name(self, i: int) -> str:
        g = self.sched.graph
        named = {v: k for k, v in g.names.items()}
        return named[i] if i in named else f"v{i}"
