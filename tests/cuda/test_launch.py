"""The dispatcher-free launches (`backends/cuda/launch.py`) on numba-cuda's own array classes and
marshalling, with fake device addresses and a recorded ``cuda.core.launch`` (no GPU needed; numba-cuda
must be installed, not under the simulator).

What must hold: the parameters a bound launch passes are exactly those numba-cuda's own marshalling
(`_Kernel._prepare_args`) makes for the same arguments; an argument whose kind could select another
compiled kernel (non-contiguous, broadcast, host arrays) goes through the dispatcher.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from test_pool import fake_device, make_pool   # noqa: F401  (fixture)


class Marshaller:
    """numba-cuda's `_Kernel._prepare_args`, on an object that has only what it reads."""
    extensions: list = []

    def _prepare_args(self, ty, val, stream, retr, out):
        from numba.cuda.dispatcher import _Kernel
        return _Kernel._prepare_args(self, ty, val, stream, retr, out)


def numba_params(args):
    from numba import typeof
    from seqengine.backends.cuda.launch import _value
    out, retr = [], []
    for a in args:
        Marshaller()._prepare_args(typeof(a), a, 0, retr, out)
    assert not retr
    return [_value(v) for v in out]


def our_params(args):
    from seqengine.backends.cuda.launch import _marshal, _value
    out = []
    _marshal(args, out)
    return [_value(v) for v in out]


def test_parameters_equal_numba_cudas_own(fake_device):
    pool, _ = make_pool()
    a = pool.empty((3, 4, 5), np.float32)
    b = pool.empty((6, 2), np.float64)
    args = (a, a[1], a.reshape(12, 5)[2:7], (b, b[3:]), 7, np.float32(1.5), np.float64(-2.0))
    assert our_params(args) == numba_params(args)


def test_kinds_follow_numbas_contiguity(fake_device):
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from seqengine.backends.cuda import launch
    pool, _ = make_pool()

    def _kinds(args):
        return launch._kinds(args, DeviceNDArray)
    a = pool.empty((4, 6), np.float32)
    one_row = pool.empty((1, 6), np.float32)
    for view in (a, a[1:3], a[2], one_row, a[:, 1:], a[:, 2], a[::2]):
        contiguous = bool(view.flags["C_CONTIGUOUS"])
        assert (_kinds((view,)) is not None) == contiguous, (view.shape, view.strides)
    assert _kinds((a, (a, 3), np.float32(0))) == (((np.dtype(np.float32), 2)),
                                                  ((np.dtype(np.float32), 2), int), np.float32)
    assert _kinds((np.zeros(3, np.float32),)) is None            # host arrays: the dispatcher copies them
    assert _kinds((True,)) is None                               # typed boolean, not int64
    assert _kinds((np.float16(1),)) is None                      # a scalar kind not marshalled here


class FakeKernel:
    def __init__(self, argument_types, marshal=None):
        from types import SimpleNamespace
        self.argument_types = argument_types
        self.debug, self.extensions, self.cooperative = False, [], False
        self.cufunc = object()
        self._codelibrary = SimpleNamespace(get_cufunc=lambda: SimpleNamespace(kernel=self.cufunc))
        self._prepare_args = marshal or Marshaller()._prepare_args


class FakeDispatcher:
    """Records launches through the dispatcher; `overloads` holds one compiled kernel per signature."""

    def __init__(self, marshal=None):
        self.overloads, self.calls, self.marshal = {}, [], marshal

    def typeof_pyval(self, value):
        from numba import typeof
        return typeof(value)

    def __getitem__(self, config):
        import warnings
        from types import SimpleNamespace
        dispatcher = self
        if config[0] in (1, (1,)):    # as numba-cuda warns of small grids (highlighted on some terminals)
            warnings.warn(UserWarning("\x1b[1mGrid size 1 will likely result in GPU under-utilization "
                                      "due to low occupancy.\x1b[0m"))

        class Configured(SimpleNamespace):
            def __call__(self, *args):
                types = tuple(dispatcher.typeof_pyval(a) for a in args)
                dispatcher.overloads.setdefault(types, FakeKernel(types, dispatcher.marshal))
                dispatcher.calls.append(numba_params(args))
        return Configured(pre_launch_callbacks=[], stream=f"stream {config[2]}")


def test_second_launch_bypasses_the_dispatcher_with_the_same_parameters(fake_device, monkeypatch):
    import numba.cuda.dispatcher
    from seqengine.backends.cuda.launch import Launcher, _value
    core = []
    monkeypatch.setattr(numba.cuda.dispatcher, "launch",
                        lambda stream, config, kernel, *params: core.append((stream, config, kernel, params)))
    pool, _ = make_pool()
    kernel, launch = FakeDispatcher(), Launcher()
    x, y = pool.empty((5, 3), np.float32), pool.empty((5, 3), np.float32)
    launch(kernel, (2, 1), (16, 16), 0, 64, x, y, 3)
    assert len(kernel.calls) == 1 and not core                   # first: compiles, through the dispatcher
    launch(kernel, (2, 1), (16, 16), 0, 64, y, x, 4)             # same kinds, other arrays and int
    assert len(kernel.calls) == 1 and len(core) == 1
    stream, config, cufunc, params = core[0]
    assert stream == "stream 0" and cufunc is next(iter(kernel.overloads.values())).cufunc
    assert (config.grid, config.block, config.shmem_size) == ((2, 1, 1), (16, 16, 1), 64)
    assert [_value(p) for p in params] == numba_params((y, x, 4))
    launch(kernel, (2, 1), (16, 16), 0, 64, x[:, 1:], y, 4)      # non-contiguous: another kernel, dispatcher
    assert len(kernel.calls) == 2 and len(core) == 1


def test_a_kernel_marshalled_differently_stays_on_the_dispatcher(fake_device, monkeypatch):
    import numba.cuda.dispatcher
    from seqengine.backends.cuda.launch import Launcher
    monkeypatch.setattr(numba.cuda.dispatcher, "launch", lambda *a: pytest.fail("bypassed the dispatcher"))
    pool, _ = make_pool()
    # a numba-cuda that passes other values for an array than launch._marshal does
    kernel = FakeDispatcher(marshal=lambda ty, val, stream, retr, out: out.extend([0] * 10))
    launch = Launcher()
    x = pool.empty((5, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # and the low-occupancy warning of these small grids is not raised
        for _ in range(3):
            launch(kernel, 1, 32, 0, 0, x)
    assert len(kernel.calls) == 3


def test_step_launch_replaces_only_t_in_numbas_parameters(fake_device, monkeypatch):
    import numba.cuda.dispatcher
    from seqengine.backends.cuda import launch as launch_module
    from seqengine.backends.cuda.launch import Launcher, StepLaunch, _value
    core = []
    monkeypatch.setattr(numba.cuda.dispatcher, "launch",
                        lambda stream, config, kernel, *params: core.append([_value(p) for p in params]))
    monkeypatch.setattr(launch_module, "launch", Launcher())
    pool, _ = make_pool()
    kernel = FakeDispatcher()
    x, y = pool.empty((4, 3), np.float32), pool.empty((2, 5), np.float64)
    step = StepLaunch(kernel, (2, 1), (8, 8), 0, 0, [x, 0, y], 1)
    for t in (3, 1, 2):
        step(t)
    assert step.bound and len(kernel.calls) == 1      # the first launch only through the dispatcher
    assert core == [numba_params((x, 1, y)), numba_params((x, 2, y))]
