"""Data-parallel training over MPI: every rank runs the same `Trainer` on its share of each global batch.

    mpiexec -n 2 seqengine train --task chars --batch 32      # 16 sequences per rank; the numbers of -n 1

    # the Python API: the same Trainer, found to be under mpiexec by its environment
    from seqengine.train import TrainConfig, Trainer
    from seqengine.train.distributed import guarded
    guarded(lambda: Trainer(TrainConfig(task="adding", batch=64, seed=0), out_dir="runs/add").fit())

How a step runs on N ranks (`World` is the hook the trainer calls; `LOCAL` is the single process):

- Every rank draws the same global batch from the same data stream, then keeps its rows [lo, hi)
  (`local_batch`; the first B % N ranks get one row more). Step, data position and random state are those
  of a single-process run, so checkpoints and `--resume` work unchanged, under MPI or not.
- The local loss and gradients are means over the local rows; each is weighted by local_rows / B and
  packed into one persistent flat buffer (the loss in its last slot), and one in-place
  ``Allreduce(SUM)`` per step makes it the global-batch mean on every rank. The entries of
  ``model.grads`` then become views of that buffer. Every loss scores the same number of positions per
  row, so this is exactly the mean over the global batch (up to float reduction order).
- Clipping and the optimizer then run on identical gradients, so parameters stay bitwise identical.
- Dropout masks are drawn for the global batch and sliced (`_RowSlice`), so -n N matches -n 1 with
  dropout as well.
- A trainer starts from rank 0's configuration (a drawn seed included), parameters and optimizer state
  (`broadcast_state`, also after a resume).
- Rank 0 alone writes checkpoints and the log and shows progress; a failed write raises on every rank
  (`on_root`). Stopping (Ctrl-C, a time limit) is decided together each step (`any`), so all ranks stop
  after the same step. Evaluation batches are dealt round-robin over the ranks and their sums allreduced.

MPI is found lazily: mpi4py is imported only when the environment says the process was started by an MPI
launcher (`LAUNCHER_VARIABLES`), or when asked for (``seqengine train --distributed``,
``SEQENGINE_DISTRIBUTED=1``). A plain install never imports it. Under MPI each rank's Numba threads (and
BLAS threads outside the kernels) are set to cores / ranks on its node, unless NUMBA_NUM_THREADS is set.

Faults: `guarded` runs a rank's main; an exception prints its traceback with the rank and calls
``MPI_Abort``, and a non-zero exit status aborts too, so the job ends with the error instead of the other
ranks waiting in a collective forever. (``python -m mpi4py script.py`` does the same for scripts.)
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np

# environment variables that MPI launchers set in every process they start (presence = launched by MPI)
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE",   # Open MPI
                      "PMI_SIZE",               # MPICH (hydra), Intel MPI, srun --mpi=pmi2
                      "PMIX_RANK",              # PMIx launchers: Open MPI 5, srun --mpi=pmix
                      "MPI_LOCALNRANKS",        # MPICH
                      "MV2_COMM_WORLD_SIZE")    # MVAPICH2
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


ABORT_GRACE_S = 0.5   # seconds between writing an error and MPI_Abort


class DistributedError(RuntimeError):
    """Data-parallel training cannot run as asked (no mpi4py, a mismatched launcher, a batch too small)."""


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process, or SEQENGINE_DISTRIBUTED=1 asks for MPI."""
    if os.environ.get("SEQENGINE_DISTRIBUTED", "") not in ("", "0"):
        return True
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


class World:
    """One process (`LOCAL`): every hook is the identity. `MPIWorld` overrides them."""
    rank, size = 0, 1
    is_root = True

    def rows(self, batch: int) -> tuple[int, int]:
        """[lo, hi) of this rank's rows of a global batch of `batch` sequences."""
        return 0, batch

    def local_batch(self, inputs, targets, batch_axis_of_targets: int):
        return inputs, targets

    def agree_config(self, config, seed_drawn: bool = False):
        """The resolved config every rank runs: rank 0's drawn seed; a rank given other settings is an error."""
        return config

    def attach(self, trainer) -> None:
        """Prepare `trainer` (after its model exists): check the batch, slice dropout, broadcast state."""

    def average_gradients(self, grads: dict, loss: float) -> float:
        """Turn local (mean over local rows) `grads` and `loss` into global-batch means; returns the loss."""
        return loss

    def allreduce_sum(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def any(self, flag) -> bool:
        return bool(flag)

    def on_root(self, fn):
        """fn() run by rank 0 alone; its result (or its exception) reaches every rank."""
        return fn()

    def broadcast_state(self, trainer) -> None:
        """Overwrite this rank's parameters, optimizer state, step, history and random state with rank 0's."""

    def abort(self, code: int = 1):
        raise SystemExit(code)

    @property
    def comm_seconds(self) -> float:
        return 0.0


LOCAL = World()


class _RowSlice:
    """A generator stand-in for dropout: `random(shape)` draws the global batch's [T, B, H] and returns this
    rank's rows, so masks are those of the single-process run. State lives in the wrapped generator."""

    def __init__(self, rng: np.random.Generator, lo: int, hi: int, batch: int):
        self.rng, self.lo, self.hi, self.batch = rng, lo, hi, batch

    @property
    def bit_generator(self):
        return self.rng.bit_generator

    def random(self, shape, *args, **kw):
        shape = tuple(shape)
        if len(shape) < 2 or shape[1] != self.hi - self.lo:
            raise DistributedError(f"dropout drew a mask of shape {shape}; expected [T, {self.hi - self.lo}, ...] "
                                   f"(this rank's rows of the global batch)")
        full = self.rng.random((shape[0], self.batch) + shape[2:], *args, **kw)
        return full[:, self.lo:self.hi]


class _GradientBuffer:
    """One persistent flat buffer for all gradients (in `names` order) and the loss (last slot)."""

    def __init__(self, grads: dict, dtype):
        self.names = list(grads)
        self.shapes = [grads[k].shape for k in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.buffer = np.empty(sum(self.sizes) + 1, dtype)     # [P + 1]

    def matches(self, grads: dict) -> bool:
        return list(grads) == self.names and all(grads[k].shape == s for k, s in zip(self.names, self.shapes))

    def pack(self, grads: dict, loss: float, weight: float) -> None:
        buf, w, o = self.buffer, self.buffer.dtype.type(weight), 0
        for k, n in zip(self.names, self.sizes):
            np.multiply(grads[k].reshape(-1), w, out=buf[o:o + n])
            o += n
        buf[o] = loss * weight

    def unpack(self, grads: dict) -> float:
        o = 0
        for k, n, s in zip(self.names, self.sizes, self.shapes):
            grads[k] = self.buffer[o:o + n].reshape(s)          # a view: no copy back
            o += n
        return float(self.buffer[o])


class MPIWorld(World):
    """The ranks of an MPI communicator (default COMM_WORLD) training one model together."""

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this node
        self._rows = None
        self._buffer: _GradientBuffer | None = None
        self._comm_seconds = 0.0
        self.allreduce_calls = 0

    def __repr__(self):
        return f"MPIWorld(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    # -- batch slicing ---------------------------------------------------------------
    def rows(self, batch):
        share, extra = divmod(batch, self.size)
        lo = self.rank * share + min(self.rank, extra)
        return lo, lo + share + (self.rank < extra)

    def local_batch(self, inputs, targets, batch_axis_of_targets):
        B = np.shape(inputs)[1]
        lo, hi = self.rows(B)
        self._rows = (hi - lo, B)
        index = (slice(None),) * batch_axis_of_targets + (slice(lo, hi),)
        return inputs[:, lo:hi], targets[index]

    def agree_config(self, config, seed_drawn=False):
        import dataclasses
        root = self.comm.bcast(dataclasses.asdict(config) if self.is_root else None, root=0)
        if seed_drawn:     # each rank drew its own; rank 0's is the run's
            config = dataclasses.replace(config, seed=root["seed"])
        mine = dataclasses.asdict(config)
        every = self.comm.allgather([(k, mine[k]) for k in sorted(mine) if mine[k] != root.get(k)])
        if any(every):
            detail = "; ".join(f"rank {r} has " + ", ".join(f"{k}={v!r} (rank 0: {root.get(k)!r})" for k, v in d)
                               for r, d in enumerate(every) if d)
            raise DistributedError(f"the MPI ranks were given different training configurations: {detail}; "
                                   f"start every rank with the same options")
        return config

    def attach(self, trainer):
        cfg = trainer.config
        if cfg.batch < self.size:
            raise DistributedError(f"batch {cfg.batch} is smaller than the {self.size} MPI ranks: every rank needs "
                                   f"at least one sequence per step; use --batch {self.size} or more, or fewer "
                                   f"ranks (mpiexec -n {cfg.batch})")
        rnn = trainer.model.rnn
        rng = rnn.dropout_rng
        if rng is not None and not isinstance(rng, _RowSlice):
            lo, hi = self.rows(cfg.batch)
            rnn.dropout_rng = _RowSlice(rng, lo, hi, cfg.batch)
        self.broadcast_state(trainer)

    # -- per-step collectives ----------------------------------------------------------
    def average_gradients(self, grads, loss):
        if self._rows is None:
            raise DistributedError("average_gradients() before local_batch(): the local rows are unknown")
        local, batch = self._rows
        if self._buffer is None or not self._buffer.matches(grads):
            dtype = np.result_type(*grads.values())
            self._buffer = _GradientBuffer(grads, dtype)
        self._buffer.pack(grads, loss, local / batch)
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, self._buffer.buffer, op=self.MPI.SUM)
        self._comm_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        return self._buffer.unpack(grads)

    def allreduce_sum(self, values):
        buf = np.array(values, np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return [float(v) for v in buf]

    def any(self, flag):
        buf = np.array([1 if flag else 0], np.int32)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return bool(buf[0])

    def on_root(self, fn):
        outcome = None
        if self.is_root:
            try:
                outcome = (True, fn())
            except BaseException as e:
                error = e
                outcome = (False, _picklable(e))
        ok, value = self.comm.bcast(outcome, root=0)
        if ok:
            return value
        if self.is_root:
            raise error
        raise value

    def broadcast_state(self, trainer):
        # arrays in one flat buffer per dtype, then the scalars and random states as one object
        arrays = list(trainer.model.params.values())
        for d in trainer.optimizer.state.values():
            arrays.extend(d[k] for k in trainer.model.params)
        for dtype in sorted({a.dtype.str for a in arrays}):
            group = [a for a in arrays if a.dtype.str == dtype]
            flat = np.concatenate([a.reshape(-1) for a in group]) if self.is_root else \
                np.empty(sum(a.size for a in group), dtype)
            self.comm.Bcast(flat, root=0)
            o = 0
            for a in group:
                a[...] = flat[o:o + a.size].reshape(a.shape)       # in place: the RNN layer shares these
                o += a.size
        dropout = trainer.model.rnn.dropout_rng
        state = self.comm.bcast(None if not self.is_root else {
            "step": trainer.step, "elapsed": trainer.elapsed, "history": trainer.history,
            "recent": trainer._recent, "optimizer_steps": trainer.optimizer.steps,
            "data": trainer.data_rng.bit_generator.state,
            "dropout": None if dropout is None else dropout.bit_generator.state}, root=0)
        trainer.step, trainer.elapsed = state["step"], state["elapsed"]
        trainer.history, trainer._recent = list(state["history"]), list(state["recent"])
        trainer.optimizer.steps = state["optimizer_steps"]
        trainer.data_rng.bit_generator.state = state["data"]
        if dropout is not None:
            dropout.bit_generator.state = state["dropout"]

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        # MPICH's launcher forwards each rank's output through a proxy that MPI_Abort tears down: with
        # no pause the error message was lost now and then (seen once in CI: empty stderr, exit 1)
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
        os._exit(code)        # MPICH's MPI_Abort can return before the launcher ends this process

    @property
    def comm_seconds(self) -> float:
        """Seconds spent in the gradient Allreduce so far (waiting for slower ranks included)."""
        return self._comm_seconds


def _picklable(e: BaseException) -> BaseException:
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return DistributedError(f"rank 0 failed: {type(e).__name__}: {e}")


_world: World | None = None


def current_world(require: bool = False) -> World:
    """`LOCAL`, or the `MPIWorld` of COMM_WORLD when launched by MPI (or `require`d); created once."""
    global _world
    if _world is not None and (not require or isinstance(_world, MPIWorld)):
        return _world
    if not (require or launched_by_mpi()):
        _world = LOCAL
        return _world
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        found = ", ".join(f"{v}={os.environ[v]}" for v in LAUNCHER_VARIABLES if v in os.environ)
        raise DistributedError(f"data-parallel training needs mpi4py ({found or 'asked for'}), which is not "
                               f"installed: pip install 'seqengine[mpi]' (or mpi4py built against your "
                               f"cluster's MPI)") from None
    world = MPIWorld()
    expected = next((int(os.environ[v]) for v in _SIZE_VARIABLES if os.environ.get(v, "").isdigit()), None)
    if expected is not None and expected != world.size:
        from mpi4py import MPI
        raise DistributedError(
            f"the launcher started {expected} processes but MPI sees {world.size}: the mpiexec that started "
            f"this job belongs to another MPI library than the one mpi4py uses "
            f"({MPI.Get_library_version().splitlines()[0].strip()}); use that library's mpiexec, or rebuild "
            f"mpi4py against yours (see docs/MPI.md)")
    set_threads(world.local_size)
    _world = world
    return world


def set_threads(ranks_per_node: int) -> int:
    """Numba (and BLAS) threads = usable cores / ranks on this node, unless NUMBA_NUM_THREADS is set."""
    import numba
    if "NUMBA_NUM_THREADS" in os.environ:
        return numba.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(numba.config.NUMBA_NUM_THREADS, cores // max(1, ranks_per_node)))
    numba.set_num_threads(n)
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="blas")
    return n


def guarded(main, *args, world: World | None = None):
    """Run a rank's `main(*args)`. Under MPI with several ranks, an exception prints its traceback with the
    rank and aborts the job, and so does a non-zero return (an error another rank may not have hit, which
    would leave it waiting forever); other ranks' standard output is silenced (rank 0 reports)."""
    try:
        world = current_world() if world is None else world
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if world.size == 1:
        return main(*args)
    saved_stdout = sys.stdout
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    try:
        code = main(*args)
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (None, 0):
            raise
        sys.stderr.write(f"seqengine: rank {world.rank} of {world.size} failed; aborting the job\n"
                         + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        world.abort(1)
    finally:
        if sys.stdout is not saved_stdout:
            sys.stdout.close()
            sys.stdout = saved_stdout
    if code:
        sys.stderr.write(f"seqengine: rank {world.rank} of {world.size} exited with status {code}; "
                         f"aborting the job\n")
        world.abort(int(code))
    return code
