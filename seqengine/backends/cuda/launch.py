"""Launch one kernel many times with the same arguments except the step index ``t``.

Why: numba-cuda's dispatcher types every argument and marshals every array (seven values each) on
every launch. On an H200 that cost 21 us for a 4-argument kernel and 83 us for a 20-array one
(session 3, `RESULTS.md`), while the step kernels themselves run for a few microseconds; a training
step launches its step kernels 2T times with the same arrays. `StepLaunch` does the typing and the
marshalling once, on the first launch, and then hands the prepared argument list straight to
``cuda.core.launch`` with only ``t`` replaced.

The binding reads numba-cuda internals (``overloads``, ``_prepare_args``, the code library's cufunc).
Where they are missing or differ (the CUDA simulator, another numba-cuda version, a debug build)
`StepLaunch` keeps launching through the dispatcher: slower, never wrong. ``bound`` says which.
"""

from __future__ import annotations

import ctypes
import math


class StepLaunch:
    """``launch(t)`` runs ``kernel[grid, block, stream, shared](*args)`` with ``args[t_position] = t``.

    The arrays in `args` must stay alive and unchanged in identity while the object is used (the
    runtime builds one per kernel per call and drops it at the end of the call).
    """

    def __init__(self, dispatcher, griddim, blockdim, stream, sharedmem: int, args, t_position: int):
        self.dispatcher = dispatcher
        self.configured = dispatcher[griddim, blockdim, stream, sharedmem]
        self.args = list(args)
        self.t_position = t_position
        self.bound = False      # True once launches bypass the dispatcher
        self._fast = None       # (core launch, stream, config, cufunc kernel, kernel args, index of t)
        self._tried = False

    def __call__(self, t: int) -> None:
        fast = self._fast
        if fast is not None:
            core_launch, stream, config, kernel, kernel_args, t_index = fast
            kernel_args[t_index] = ctypes.c_int64(t)
            core_launch(stream, config, kernel, *kernel_args)
            return
        self.args[self.t_position] = t
        self.configured(*self.args)          # the first launch compiles (or loads from the disk cache)
        if not self._tried:
            self._tried = True
            self._fast = self._bind()
            self.bound = self._fast is not None

    def _bind(self):
        """The prepared launch, or None where this numba-cuda cannot be bound (see module docstring)."""
        try:
            from numba.cuda import types
            from numba.cuda.dispatcher import CUDA_CORE_GE_1_0, LaunchConfig, launch
        except ImportError:          # the simulator, or a numba-cuda without cuda.core launches
            return None
        d, cfg = self.dispatcher, self.configured
        if not hasattr(d, "typeof_pyval") or not hasattr(cfg, "pre_launch_callbacks"):   # the simulator
            return None
        if getattr(d, "_launch_config_sensitive", False) or cfg.pre_launch_callbacks:
            return None
        argtypes = tuple(d.typeof_pyval(a) for a in self.args)
        kernel = d.overloads.get(argtypes)
        if kernel is None or kernel.debug or kernel.argument_types[self.t_position] != types.int64:
            return None
        kernel_args, written_back, t_index = [], [], None
        for k, (ty, value) in enumerate(zip(kernel.argument_types, self.args)):
            if k == self.t_position:
                t_index = len(kernel_args)
            kernel._prepare_args(ty, value, cfg.stream, written_back, kernel_args)
        if written_back:             # a host array was copied in: it must be copied on every launch
            return None
        shape = dict(grid=cfg.griddim, block=cfg.blockdim, shmem_size=cfg.sharedmem)
        shape["is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch"] = kernel.cooperative
        return (launch, cfg.stream, LaunchConfig(**shape), kernel._codelibrary.get_cufunc().kernel,
                kernel_args, t_index)


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
