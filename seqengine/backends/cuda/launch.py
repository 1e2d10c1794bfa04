"""Kernel launches that bypass numba-cuda's dispatcher once a kernel is compiled.

Why: numba-cuda's dispatcher types every argument and marshals every array (seven values each) on
every launch. On an H200 that cost 21 us for a 4-argument kernel and 83 us for a 20-array one
(session 3, `RESULTS.md`), while the step kernels themselves run for a few microseconds, and a
training call's host work bounds it at the smaller shapes (session 8: numba-cuda's launch path was
~40% of the profiled host time of an rnn step at 50x16x512, and the GPU waited for the host).

- `launch` (a `Launcher`): any kernel with any arguments. The compiled kernel is looked up once per
  (kernel, argument kinds) and the arguments marshalled by a few lines of Python (the values
  numba-cuda would pass; checked against its own marshalling when a kernel is first bound).
- `StepLaunch`: one kernel launched many times with the same arguments except the step index ``t``
  (the step loop): bound by `launch`, marshalled once, then only ``t`` is replaced.

These read numba-cuda internals (``overloads``, ``_prepare_args``, the code library's cufunc). Where they
are missing or differ (the CUDA simulator, another numba-cuda version, a debug build) they launch
through the dispatcher: slower, never wrong. ``SEQENGINE_CUDA_DIRECT=0`` sends every launch through
the dispatcher.
"""

from __future__ import annotations

import ctypes
import math
import os
import warnings

import numpy as np


class StepLaunch:
    """``launch(t)`` runs ``kernel[grid, block, stream, shared](*args)`` with ``args[t_position] = t``.

    The first launch goes through `launch` (the Launcher), which binds the kernel; the parameters are
    then marshalled once and only ``t`` is replaced. The arrays in `args` must stay alive and
    unchanged in identity while the object is used (the runtime builds one per kernel per call and
    drops it at the end of the call).
    """

    def __init__(self, dispatcher, griddim, blockdim, stream, sharedmem: int, args, t_position: int):
        self.dispatcher = dispatcher
        self.shape = (griddim, blockdim, stream, sharedmem)
        self.args = list(args)
        self.t_position = t_position
        self.bound = False      # True once launches bypass the dispatcher
        self._fast = None       # (core launch, stream, config, cufunc kernel, parameters, index of t)
        self._tried = False

    def __call__(self, t: int) -> None:
        fast = self._fast
        if fast is not None:
            core_launch, stream, config, kernel, params, t_index = fast
            params[t_index] = ctypes.c_int64(t)
            core_launch(stream, config, kernel, *params)
            return
        self.args[self.t_position] = t
        launch(self.dispatcher, *self.shape, *self.args)   # the first launch compiles and binds
        if not self._tried:
            self._tried = True
            self._fast = launch.prepared(self.dispatcher, *self.shape, self.args, self.t_position)
            self.bound = self._fast is not None


def compiled_kernel(dispatcher, configured, args):
    """The compiled kernel that `configured` (``dispatcher[grid, block, stream, shared]``) launched for
    `args`, where its launches can bypass the dispatcher; else None (the simulator, a numba-cuda
    without cuda.core launches, launch-config-sensitive or debug kernels, argument extensions)."""
    try:
        from numba.cuda.dispatcher import launch  # noqa: F401  (cuda.core launches)
    except ImportError:
        return None
    if not hasattr(dispatcher, "typeof_pyval") or not hasattr(configured, "pre_launch_callbacks"):
        return None
    if getattr(dispatcher, "_launch_config_sensitive", False) or configured.pre_launch_callbacks:
        return None
    kernel = dispatcher.overloads.get(tuple(dispatcher.typeof_pyval(a) for a in args))
    if kernel is None or kernel.debug or getattr(kernel, "extensions", None):
        return None
    return kernel


def core_launch_config(griddim, blockdim, sharedmem: int, cooperative: bool):
    """cuda.core's launch configuration (its keyword for cooperative launches changed in cuda.core 1.0)."""
    from numba.cuda.dispatcher import CUDA_CORE_GE_1_0, LaunchConfig
    shape = dict(grid=griddim, block=blockdim, shmem_size=sharedmem)
    shape["is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch"] = cooperative
    return LaunchConfig(**shape)


def _dims(d) -> tuple:
    d = (d,) if isinstance(d, int) else tuple(d)
    return d + (1,) * (3 - len(d))


class Launcher:
    """``launch(kernel, grid, block, stream, shared, *args)`` = ``kernel[grid, block, stream, shared](*args)``.

    The first launch of a kernel with a given kind of arguments goes through the dispatcher (which
    compiles it); if the compiled kernel can be bypassed and this module's marshalling of the
    arguments equals numba-cuda's, later launches with arguments of the same kinds go straight to
    ``cuda.core.launch``. Kinds: Python ints (int64), NumPy float32/float64 scalars, tuples of kinds, and
    C-contiguous non-empty Numba device arrays by (dtype, ndim); anything else always takes the
    dispatcher. numba-cuda's low-occupancy warning, which every launch of a small grid raises, is
    not raised: the grids here are sized to the problem on purpose (a user's own launches keep it).
    """

    def __init__(self):
        self._array_class = None    # numba-cuda's DeviceNDArray; False where it has none (the simulator)
        self._kernels: dict = {}    # (dispatcher, kinds) -> (cufunc kernel, cooperative) or None
        self._configs: dict = {}    # (grid, block, shared, cooperative) -> cuda.core LaunchConfig
        self._streams: dict = {}    # the stream argument -> numba-cuda's cuda.core stream object

    def __call__(self, dispatcher, griddim, blockdim, stream, sharedmem, *args) -> None:
        kinds, bound = self._bound(dispatcher, griddim, blockdim, sharedmem, args)
        if bound is None:
            self._through_dispatcher(dispatcher, griddim, blockdim, stream, sharedmem, args, kinds)
            return
        params: list = []
        _marshal(args, params)
        self._core_launch(self._streams[stream], *bound, *params)

    def prepared(self, dispatcher, griddim, blockdim, stream, sharedmem, args, t_position: int):
        """For `StepLaunch`, after a launch with `args`: (core launch, stream, config, cufunc, parameters,
        index of args[t_position] among them), or None where the kernel is not bound."""
        _, bound = self._bound(dispatcher, griddim, blockdim, sharedmem, args)
        if bound is None or type(args[t_position]) is not int:
            return None
        params, before_t = [], []
        _marshal(args, params)
        _marshal(args[:t_position], before_t)
        return (self._core_launch, self._streams[stream], *bound, params, len(before_t))

    def _bound(self, dispatcher, griddim, blockdim, sharedmem, args):
        """(kinds of `args`, (cuda.core config, cufunc) where the kernel is bound for them, else None)."""
        if self._array_class is None:
            try:
                from numba.cuda.cudadrv.devicearray import DeviceNDArray as array_class
            except ImportError:
                array_class = False
            if os.environ.get("SEQENGINE_CUDA_DIRECT", "1") == "0":
                array_class = False
            self._array_class = array_class
        kinds = _kinds(args, self._array_class) if self._array_class else None
        bound = self._kernels.get((dispatcher, kinds)) if kinds is not None else None
        if bound is None:
            return kinds, None
        cufunc, cooperative = bound
        key = (griddim, blockdim, sharedmem, cooperative)
        config = self._configs.get(key)
        if config is None:
            config = self._configs[key] = core_launch_config(_dims(griddim), _dims(blockdim), sharedmem, cooperative)
        return kinds, (config, cufunc)

    def _through_dispatcher(self, dispatcher, griddim, blockdim, stream, sharedmem, args, kinds):
        with warnings.catch_warnings():   # the low-occupancy warning: these grids are sized on purpose
            warnings.filterwarnings("ignore", message=".*Grid size .* under-utilization")   # may come highlighted
            configured = dispatcher[griddim, blockdim, stream, sharedmem]
        configured(*args)
        if kinds is None or (dispatcher, kinds) in self._kernels:
            return
        self._kernels[dispatcher, kinds] = None
        kernel = compiled_kernel(dispatcher, configured, args)
        if kernel is None:
            return
        expected, written_back = [], []
        for ty, value in zip(kernel.argument_types, args):
            kernel._prepare_args(ty, value, configured.stream, written_back, expected)
        ours: list = []
        _marshal(args, ours)
        if written_back or [_value(v) for v in ours] != [_value(v) for v in expected]:
            return                   # another numba-cuda's marshalling: keep the dispatcher
        from numba.cuda.dispatcher import launch
        self._core_launch = launch
        self._streams.setdefault(stream, configured.stream)
        self._kernels[dispatcher, kinds] = (kernel._codelibrary.get_cufunc().kernel, kernel.cooperative)


def _kinds(args, array_class):
    """What selects the compiled kernel for `args` (see Launcher), or None: use the dispatcher.
    `array_class`: numba-cuda's DeviceNDArray."""
    kinds = []
    for a in args:
        t = type(a)
        if t is int:
            kinds.append(int)
        elif t in _C_SCALARS:
            kinds.append(t)
        elif t is tuple:
            inner = _kinds(a, array_class)
            if inner is None:
                return None
            kinds.append(inner)
        elif isinstance(a, array_class) and a.size and _c_contiguous(a.shape, a.strides, a.dtype.itemsize):
            kinds.append((a.dtype, len(a.shape)))
        else:
            return None
    return tuple(kinds)


def _c_contiguous(shape, strides, itemsize: int) -> bool:
    """numba-cuda's C_CONTIGUOUS flag for a non-empty array (dimensions of one element skipped; any
    zero stride makes a broadcast array, typed 'A')."""
    if 0 in strides:
        return False
    expected = itemsize
    for n, stride in zip(reversed(shape), reversed(strides)):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


_C_SCALARS = {np.float32: ctypes.c_float, np.float64: ctypes.c_double}   # NumPy scalars as numba-cuda passes them


def _marshal(args, out: list) -> None:
    """Append the kernel parameters of `args` as numba-cuda passes them: an array as meminfo, parent,
    size, itemsize, data pointer, shape, strides; an int as int64; a tuple flattened."""
    for a in args:
        t = type(a)
        if t is int:
            out.append(ctypes.c_int64(a))
        elif t is tuple:
            _marshal(a, out)
        elif t in _C_SCALARS:
            out.append(_C_SCALARS[t](a))
        else:
            out += (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value or 0)
            out += a.shape
            out += a.strides


def _value(v):
    return v.value if isinstance(v, ctypes._SimpleCData) else v


launch = Launcher()


def cooperative_blocks(dispatcher, args, blockdim, sharedmem: int) -> int:
    """How many blocks of `dispatcher` (a kernel that meets at grid barriers) can run at once here.

    The CUDA simulator runs a cooperative grid of one block only; a GPU answers through the driver's
    occupancy query (0 when a block does not fit at all).
    """
    if not hasattr(dispatcher, "typeof_pyval"):      # the simulator's kernels
        return 1
    kernel = dispatcher.compile(tuple(dispatcher.typeof_pyval(a) for a in args))
    threads = math.prod(blockdim) if isinstance(blockdim, tuple) else blockdim
    return kernel.max_cooperative_grid_blocks(threads, sharedmem)
