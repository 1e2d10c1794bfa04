"""Drive one cell's generated CUDA kernels: same interface as `CpuKernels`.

Arrays in: host NumPy arrays (copied to the device, results copied back) or
device arrays exposing ``__cuda_array_interface__`` (Numba device arrays, CuPy,
torch CUDA tensors), used without copies; then the results stay on the device
as Numba device arrays (wrap them with ``torch.as_tensor(a, device="cuda")`` or
``cupy.asarray(a)``). Whether results are host or device follows ``x`` in
forward and the tape in backward.

Forward (training), for G_x products with x and in-loop groups g:
    x_proj = x @ [W_1; ...; W_Gx]^T                  # gemm_kernel, [T*B, D] @ [D, Gx*H]
    forward_train_persistent_kernel                  # one cooperative launch: for t, for each segment
                                                     # (products of level L + pointwise), grid barrier
    (LaunchConfig(persistent=False), or no block fits: for t: for each segment:
     forward_train_seg<L>_kernel, each launch bound once per call by StepLaunch)
Backward:
    backward_persistent_kernel                       # for t reversed, for each segment reversed
    backward_initial_kernel                          # d_init = d_state[0] + d_prod[0] @ U
    dW_x = d_x_proj^T @ x,  dx = d_x_proj @ W_x,  dU_g = d_prod_g^T @ operand_g   # gemm_kernel
    where the x products' adjoints are in-loop groups' d_prods side by side (sched.x_adjoint_groups:
    LSTM's d_prod is d_x_proj), the step kernels write no d_x_proj: W_x's row blocks take theirs from
    those d_prods, and dx adds up d_prod_g @ (its rows of W_x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import cuda

from ...compiler.schedule import Schedule
from .config import DEFAULT_LAUNCH, LaunchConfig
from .gemm import gemm_kernel_name, gemm_module
from .launch import StepLaunch, cooperative_blocks, launch
from .pool import POOL


@dataclass
class Tape:
    """What backward needs from a training forward (device arrays by kernel name)."""
    x: object                          # [T, B, D] device array (padding zeroed)
    arrays: dict                       # x_proj, state_<s>, saved_<v>, param_<p>, lengths, w_x
    on_device: bool                    # the caller passed device arrays: return device arrays
    consumed: bool = False
    extra: dict = field(default_factory=dict)


def is_device_array(a) -> bool:
    return cuda.devicearray.is_cuda_ndarray(a) or hasattr(a, "__cuda_array_interface__")


# Split a GEMM's sum over K until it has about this many blocks (an H100/H200 has 132 SMs), keeping at
# least GEMM_MIN_SLICE_TILES depth stages per slice. Tuned for 64 x 64 tiles (session 4's kernel, and
# the default 16 x 16 threads of 4 x 4 outputs since session 8).
GEMM_BLOCKS_WANTED = 512
GEMM_MIN_SLICE_TILES = 8


def _blocks(n: int, per_block: int) -> int:
    return max(1, math.ceil(n / per_block))


class CudaKernels:
    def __init__(self, sched: Schedule, module, dtype: np.dtype, launch: LaunchConfig = DEFAULT_LAUNCH):
        self.sched, self.module, self.dtype, self.launch = sched, module, np.dtype(dtype), launch
        self.info = module.KERNELS
        self.gemm = gemm_module(self.dtype.name, launch.gemm_tile, launch.gemm_regs)
        self._resident: dict = {}   # (mode, block, shared bytes) -> blocks of a persistent kernel that fit
        # (B, T) -> device lengths, all T. Why kept: a copy from pageable host memory on the default stream
        # waits for the GPU's queued work, which would serialize every training step with the one before
        self._whole_lengths: dict = {}
        self._multiprocessors = None   # the GPU's SM count, asked once (step_block's choice)

    def with_launch(self, launch: LaunchConfig) -> "CudaKernels":
        """The same compiled kernels, launched with other block shapes."""
        return CudaKernels(self.sched, self.module, self.dtype, launch)

    # -- arrays ------------------------------------------------------------------
    def _device(self, a, name: str, stream):
        """A device view of `a` (no copy if it is on the device already), checked."""
        if is_device_array(a):
            d = a if cuda.devicearray.is_cuda_ndarray(a) else cuda.as_cuda_array(a)
            if np.dtype(d.dtype) != self.dtype:
                raise TypeError(f"{name}: device array of dtype {d.dtype}, kernels compiled for {self.dtype}")
            if not d.is_c_contiguous():
                raise ValueError(f"{name}: device arrays must be C-contiguous")
            return d
        return self._upload(np.ascontiguousarray(a, dtype=self.dtype), stream)

    def _upload(self, host: np.ndarray, stream):
        """A device copy of the host array `host` (memory from the pool)."""
        d = self._empty(host.shape, stream, host.dtype)
        if host.size:
            d.copy_to_device(host, stream=stream)
        return d

    def _empty(self, shape, stream, dtype=None):
        return POOL.empty(shape, dtype or self.dtype, stream)

    def _zeros(self, shape, stream):
        a = self._empty(shape, stream)
        flat = a.reshape(-1)
        if flat.shape[0]:
            launch(self.module.fill_kernel, _blocks(flat.shape[0], 256), 256, stream, 0, flat, self.dtype.type(0))
        return a

    def _gemm(self, a, b, c, trans_a: bool, trans_b: bool, accumulate: bool, stream, slices: int | None = None):
        """c (+)= op(a) @ op(b) with the register-tiled kernel (`gemm.py`): ts x ts threads a block, each
        block a [ts * regs, ts * regs] tile of c.

        A product with few output tiles and a long sum (the weight gradients: [4H, D] summed over T*B
        rows) would occupy a few dozen blocks of a GPU that holds hundreds; its sum is then split
        into `slices` slices of K, one grid layer each, written apart and added in a fixed order.
        """
        ts = self.launch.gemm_tile
        tile = ts * self.launch.gemm_regs
        M, N = c.shape
        K = a.shape[0] if trans_a else a.shape[1]
        blocks = _blocks(N, tile) * _blocks(M, tile)
        if slices is None:
            slices = max(1, min(GEMM_BLOCKS_WANTED // blocks, K // (GEMM_MIN_SLICE_TILES * ts)))
        grid = (_blocks(N, tile), _blocks(M, tile), slices)
        kernel = getattr(self.gemm, gemm_kernel_name(trans_a, trans_b))
        if slices == 1:
            launch(kernel, grid, (ts, ts), stream, 0, a, b, c.reshape(1, M, N), int(accumulate))
            return
        parts = self._empty((slices, M, N), stream)
        launch(kernel, grid, (ts, ts), stream, 0, a, b, parts, 0)
        launch(self.module.sum_slices_kernel, (_blocks(N, 16), _blocks(M, 16)), (16, 16), stream, 0,
               parts, c, int(accumulate))

    def _stack(self, params, names, transpose: bool, stream):
        """[k*H, in] = [P_1; ...; P_k] (or its transpose [in, k*H]) on the device, in one launch."""
        mats = tuple(self._device(params[m], m, stream) for m in names)
        H, n_in = mats[0].shape
        out = self._empty((n_in, len(mats) * H) if transpose else (len(mats) * H, n_in), stream)
        launch(self.module.stack_kernel, (_blocks(n_in, 16), _blocks(H, 16), len(mats)), (16, 16), stream, 0,
               mats, out, int(transpose))
        return out

    def _step_launch(self, B: int, H: int):
        """Grid, block and shared bytes of a step kernel: blocks of (units, rows, splits) threads over the
        (units, rows) tiles; shared memory holds the operand tiles, then each product's partial sums."""
        u, r, z = self.launch.step_block(B, H, self.multiprocessors())
        products = max((len(grp.members) for grp in self.sched.groups), default=0)
        return (_blocks(H, u), _blocks(B, r)), (u, r, z), u * r * z * (1 + products) * self.dtype.itemsize

    def multiprocessors(self) -> int:
        """The current GPU's multiprocessor count (132 under the simulator, which has none: an H100's)."""
        if self._multiprocessors is None:
            self._multiprocessors = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", None) or 132
        return self._multiprocessors

    def _persistent(self, mode: str, args, arrays, steps: int, B: int, H: int, stream) -> bool:
        """Run every step of `mode` in one cooperative launch of its persistent kernel (blocks walk the
        step's tiles and meet at a grid barrier after each segment). False, with nothing launched,
        where the launch config turns it off or no block fits; the caller then launches per step."""
        if not self.launch.persistent:
            return False
        kernel = getattr(self.module, self.info["persistent"][mode])
        grid, block, shmem = self._step_launch(B, H)
        call = [steps if n == "t" else arrays[n] for n in args]
        key = (mode, block, shmem)
        if key not in self._resident:
            self._resident[key] = cooperative_blocks(kernel, call, block, shmem)
        blocks = min(grid[0] * grid[1], self._resident[key])
        if blocks < 1:
            return False
        launch(kernel, blocks, block, stream, shmem, *call)
        return True

    def _step_launches(self, names, args, arrays, B: int, H: int, stream) -> list[StepLaunch]:
        """The step kernels `names`, bound to their arguments once for the whole step loop."""
        grid, block, shmem = self._step_launch(B, H)
        call = [arrays[n] for n in args]
        return [StepLaunch(getattr(self.module, n), grid, block, stream, shmem, call, args.index("t"))
                for n in names]

    # -- forward -----------------------------------------------------------------
    # Numba frees device memory in batches; a batch frees through cuMemFree, which waits for the GPU.
    # Inside a call that would stall the host in mid-launch sequence (the GPU then idles while the
    # host catches up), so forward and backward defer freeing until the call has queued its work.

    def forward(self, params: dict, x, state0: dict, training: bool, lengths=None):
        """x [T, B, D], state0 {s: [B, H]}, lengths [B] (1..T; None: all T)
        -> y [T, B, H], final {s: [B, H]}, Tape or None."""
        with cuda.defer_cleanup():
            return self._forward(params, x, state0, training, lengths)

    def backward(self, params: dict, tape: Tape, dy, dfinal: dict):
        """dy [T, B, H], dfinal {s: [B, H]} -> dx [T, B, D], dstate0 {s: [B, H]}, grads {param: array}."""
        with cuda.defer_cleanup():
            return self._backward(params, tape, dy, dfinal)

    def _forward(self, params: dict, x, state0: dict, training: bool, lengths=None):
        s, dt = self.sched, self.dtype
        stream = 0
        on_device = is_device_array(x)
        device_x = self._device(x, "x", stream)
        T, B, D = device_x.shape
        H = next(iter(state0.values())).shape[1]
        if lengths is None:   # every sequence whole: one device copy per (B, T), kept (kernels only read it)
            if (B, T) not in self._whole_lengths:
                self._whole_lengths[B, T] = self._upload(np.full(B, T, np.int64), stream)
            device_lengths, padded = self._whole_lengths[B, T], False
        else:
            host_lengths = np.asarray(lengths.copy_to_host() if is_device_array(lengths) else lengths, dtype=np.int64)
            device_lengths, padded = self._upload(host_lengths, stream), host_lengths.min() < T
        if padded:   # padding never reaches the weight GEMMs, even if it is NaN
            masked = self._empty((T, B, D), stream)
            launch(self.module.mask_padding_kernel, (_blocks(D, 16), _blocks(T * B, 16)), (16, 16), stream, 0,
                   device_x, device_lengths, masked)
            device_x = masked
        arrays = {"lengths": device_lengths}

        if s.x_group is None:
            arrays["x_proj"] = self._empty((T, B, 1), stream)
        else:
            w_x = self._stack(params, s.x_group.matrices, False, stream)          # [Gx*H, D]
            x_proj = self._empty((T * B, w_x.shape[0]), stream)
            self._gemm(device_x.reshape(T * B, D), w_x, x_proj, False, True, False, stream)   # hoisted
            arrays["x_proj"] = x_proj.reshape(T, B, w_x.shape[0])
            arrays["w_x"] = w_x   # backward's dx = d_x_proj @ W_x uses the weights this forward used
        slots = T + 1 if training else 2
        for st in s.states:
            a = self._empty((slots, B, H), stream)
            a[0].copy_to_device(self._device(state0[st], f"state0[{st!r}]", stream), stream=stream)
            arrays[f"state_{st}"] = a
        for grp in s.groups:
            arrays[f"weightT_{grp.name}"] = self._stack(params, grp.matrices, True, stream)   # [in, k*H]
        for p in s.graph.vectors:
            arrays[f"param_{p}"] = self._device(params[p], p, stream)
        mode = "forward_train" if training else "forward_infer"
        names, args = self.info[mode]
        for name in args:
            if name == "y" or name.startswith("saved_"):
                arrays[name] = self._empty((T, B, H), stream)
            elif name.startswith("value_"):
                arrays[name] = self._empty((B, H), stream)
        if not self._persistent(mode, args, arrays, T, B, H, stream):
            arrays["t"] = 0
            segments = self._step_launches(names, args, arrays, B, H, stream)
            for t in range(T):
                for step_launch in segments:   # one launch per segment: a later segment reads whole rows
                    step_launch(t)

        out = s.graph.output
        if training and out in s.graph.new_state.values():
            st = next(k for k, v in s.graph.new_state.items() if v == out)
            y = arrays[f"state_{st}"][1:]
        else:
            y = arrays["y"]
        final = {}
        for st in s.states:
            f = self._empty((B, H), stream)
            if training:
                launch(self.module.gather_final_kernel, (_blocks(H, 16), _blocks(B, 16)), (16, 16), stream, 0,
                       arrays[f"state_{st}"], device_lengths, f)
            else:
                f.copy_to_device(arrays[f"state_{st}"][T & 1], stream=stream)
            final[st] = f
        tape = Tape(device_x, arrays, on_device) if training else None
        if not on_device:
            y = y.copy_to_host(stream=stream)
            final = {st: f.copy_to_host(stream=stream) for st, f in final.items()}
        return y, final, tape

    # -- backward ----------------------------------------------------------------
    def _backward(self, params: dict, tape: Tape, dy, dfinal: dict):
        s, a = self.sched, dict(tape.arrays)
        stream = 0
        x = tape.x
        T, B, D = x.shape
        H = a[f"state_{s.states[0]}"].shape[2]
        a["d_y"] = self._device(dy, "dy", stream)
        for st in s.states:
            d_state = self._empty((2, B, H), stream)
            d_state[T & 1].copy_to_device(self._device(dfinal[st], f"dfinal[{st!r}]", stream), stream=stream)
            a[f"d_state_{st}"] = d_state
            a[f"d_init_{st}"] = self._empty((B, H), stream)
        a["d_x_proj"] = a["x_proj"]          # backward never reads the x products: reuse their memory (the
        #                                      kernels write none where groups' d_prods hold those adjoints)
        for grp in s.groups:
            a[f"d_prod_{grp.name}"] = self._empty((T, B, len(grp.members) * H), stream)
            a[f"weight_{grp.name}"] = self._stack(params, grp.matrices, False, stream)   # [k*H, in]
        a["d_params"] = self._zeros((max(1, len(s.graph.vectors)), B, H), stream)
        names, args = self.info["backward"]
        for name in args:
            if name.startswith("d_cross_"):
                a[name] = self._empty((B, H), stream)
        if not self._persistent("backward", args, a, T, B, H, stream):
            a["t"] = T - 1
            segments = self._step_launches(names, args, a, B, H, stream)
            for t in range(T - 1, -1, -1):
                for step_launch in segments:
                    step_launch(t)
        init_name, init_args = self.info["initial"]
        a["t"] = -1
        grid, block, shmem = self._step_launch(B, H)
        launch(getattr(self.module, init_name), grid, block, stream, shmem, *[a[n] for n in init_args])

        # deferred weight gradients: GEMMs over all T*B rows at once
        grads = {}
        if s.graph.vectors:
            d_vec = self._empty((len(s.graph.vectors), H), stream)
            launch(self.module.sum_rows_kernel, (_blocks(H, 16), _blocks(len(s.graph.vectors), 16)), (16, 16),
                   stream, 0, a["d_params"], d_vec)
            for k, p in enumerate(s.graph.vectors):
                grads[p] = d_vec[k]
        if s.x_group is not None:
            kx = len(s.x_group.members) * H
            parts = [(a[name].reshape(T * B, hi - lo), lo, hi) for name, lo, hi in s.x_adjoint_sources(H)]
            x2 = x.reshape(T * B, D)
            d_wx = self._empty((kx, D), stream)
            dx = self._empty((T * B, D), stream)
            for k, (adjoint, lo, hi) in enumerate(parts):
                self._gemm(adjoint, x2, d_wx[lo:hi], True, False, False, stream)          # adjoint^T @ x
                self._gemm(adjoint, a["w_x"][lo:hi], dx, False, False, k > 0, stream)   # dx (+)= adjoint @ W_x rows
            self._scatter(grads, s.x_group.matrices, d_wx, H, stream)
            dx = dx.reshape(T, B, D)
        else:
            dx = self._zeros((T, B, D), stream)
        for grp in s.groups:
            if grp.kind == "state":
                operand = a[f"state_{s.graph.nodes[grp.operand].attr}"]      # states 0..T-1 are rows :T*B
            else:
                operand = a[f"saved_{self._saved_name(grp.operand)}"]
            n_in = operand.shape[2]
            k_h = len(grp.members) * H
            d_u = self._empty((k_h, n_in), stream)
            self._gemm(a[f"d_prod_{grp.name}"].reshape(T * B, k_h),
                       operand.reshape(operand.shape[0] * B, n_in)[:T * B], d_u, True, False, False, stream)
            self._scatter(grads, grp.matrices, d_u, H, stream)
        dstate0 = {st: a[f"d_init_{st}"] for st in s.states}
        for name, p in params.items():   # parameters the equations do not reach (dead code)
            if name not in grads:
                grads[name] = self._zeros(tuple(p.shape), stream)
        grads = {name: grads[name] for name in params}
        if not tape.on_device:
            dx = dx.copy_to_host(stream=stream)
            dstate0 = {st: v.copy_to_host(stream=stream) for st, v in dstate0.items()}
            grads = {name: g.copy_to_host(stream=stream) for name, g in grads.items()}
        return dx, dstate0, grads

    def _saved_name(self, i: int) -> str:
        g = self.sched.graph
        named = {v: k for k, v in g.names.items()}
        return named[i] if i in named else f"v{i}"

    def _scatter(self, grads, matrices, stacked, H, stream):
        """Each matrix's gradient is its block of rows of the stacked one (a contiguous view);
        a matrix that multiplies several operands adds up its blocks."""
        for k, m in enumerate(matrices):
            block = stacked[k * H:(k + 1) * H]
            if m in grads:
                n = block.size
                launch(self.module.add_kernel, _blocks(n, 256), 256, stream, 0, grads[m].reshape(-1), block.reshape(-1))
            else:
                grads[m] = block
