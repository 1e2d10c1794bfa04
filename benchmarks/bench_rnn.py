"""asv-style entry points over the same implementations as ``seqengine bench``.

asv discovers ``time_*`` / ``track_*`` methods and the ``params`` grid; each
``setup`` builds the implementation from seqengine's weights and checks it
against seqengine before anything is timed (`NotImplementedError` skips a
combination an implementation does not cover, as asv expects). The runner
(`seqengine bench`) is the primary tool: round-robin timing, machine record,
GEMM peak, compile and memory probes; this file lets asv track history.
"""

from seqengine.bench import peers, runner

SHAPES = ["100x32x128", "100x64x256", "50x16x512", "200x8x64", "1000x1x256"]


class TimeCell:
    params = (list(runner.DEFAULT_CELLS), SHAPES, list(runner.DEFAULT_MODES), list(runner.DEFAULT_IMPLS))
    param_names = ["cell", "shape", "mode", "impl"]
    timeout = 600
    number = 1
    repeat = (3, 7, 120.0)

    def setup(self, cell, shape, mode, impl):
        sh = runner.parse_shape(shape)
        if sh.B == 1 and mode == "train":
            raise NotImplementedError("the streaming shape is inference only")
        if not peers.supports(impl, cell, mode):
            raise NotImplementedError(f"{impl} does not cover {cell} {mode}")
        params, x, state0, dy = runner._data(cell, sh)
        self.call = self._call(peers.make_impl(impl, cell, params, x, state0, dy), mode)
        out = self.call()                                                   # also the warm-up
        if impl != "seqengine":
            ref = self._call(peers.make_impl("seqengine", cell, params, x, state0, dy), mode)()
            check = runner.compare(ref, out, runner.TOLERANCE[mode])
            if not check["passed"]:
                raise AssertionError(f"{impl} disagrees with seqengine on {cell} {mode}: {check}")

    @staticmethod
    def _call(impl, mode):
        return impl.forward if mode == "forward" else impl.train_step

    def time_step(self, cell, shape, mode, impl):
        self.call()


class TrackCompile:
    """Seconds of the first forward+backward in a fresh process with an empty kernel cache, minus steady state."""
    params = [list(runner.DEFAULT_CELLS)]
    param_names = ["cell"]
    timeout = 900
    unit = "seconds"

    def track_compile_train(self, cell):
        return runner.compile_times(cell, runner.Shape(20, 4, 32, 32))["compile_train_s"]

    def track_startup_train_warm_cache(self, cell):
        return runner.compile_times(cell, runner.Shape(20, 4, 32, 32))["startup_train_s"]
