"""The grid: cells x shapes x modes x implementations, checked, then timed round-robin.

For each (cell, shape, mode):
  1. one set of weights (seqengine's initialisation, seed 0), inputs, initial states and dy;
  2. every implementation runs once and is compared with seqengine's result (tolerances below);
     one that fails is reported and never timed;
  3. warm-up calls, then `repeats` rounds; each round times every implementation once, the order
     rotated round by round, so drift of the (shared) machine hits all of them alike;
  4. the median per implementation, GFLOP/s of the GEMM work, and ratio = peer time / seqengine time
     (the torch GPU peers: / seqengine-cuda time, `ratio_reference`).

One thread pool at a time: torch runs on torch.set_num_threads(all cores), seqengine on its Numba
threads (BLAS held to one thread inside its kernels), NumPy on its BLAS threads; the calls are
sequential and separated by an idle gap (`settle_s`) so spinning OpenMP/BLAS workers of the
previous implementation have gone to sleep, then one untimed call that wakes the next one's threads.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from . import peers

# Comparison with seqengine's float32 result: max|peer - seqengine| / max|seqengine| per array.
# Measured agreement is ~1e-6 (forward) and ~2e-6 (gradients, T=1000); the margins are ~100x.
TOLERANCE = {"forward": 1e-4, "train": 5e-4}

DEFAULT_CELLS = ("lstm", "peephole", "coupled", "gru", "gru_cho", "rnn")
DEFAULT_MODES = ("forward", "train")
DEFAULT_IMPLS = ("seqengine", "torch-native", "torch-loop", "numpy")


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    D: int
    H: int
    modes: tuple[str, ...] | None = None       # None: every mode asked for
    label: str = ""

    @property
    def text(self) -> str:
        return f"{self.T}x{self.B}x{self.H}" + (f"x{self.D}" if self.D != self.H else "")

    def as_dict(self):
        return {"T": self.T, "B": self.B, "D": self.D, "H": self.H, "label": self.label}


DEFAULT_SHAPES = (
    Shape(100, 32, 128, 128), Shape(100, 64, 256, 256), Shape(50, 16, 512, 512), Shape(200, 8, 64, 64),
    Shape(1000, 1, 256, 256, modes=("forward",), label="streaming"),
)
QUICK_SHAPES = (Shape(10, 4, 16, 16), Shape(30, 1, 16, 16, modes=("forward",), label="streaming"))


def parse_shape(text: str) -> Shape:
    """``TxBxH`` (D = H), ``TxBxHxD``, optionally ``:forward`` / ``:train`` to restrict the modes."""
    spec, _, modes = text.partition(":")
    try:
        nums = [int(v) for v in spec.lower().split("x")]
    except ValueError:
        raise ValueError(f"shape {text!r}: expected TxBxH or TxBxHxD, e.g. 100x32x128") from None
    if len(nums) not in (3, 4) or min(nums) < 1:
        raise ValueError(f"shape {text!r}: expected TxBxH or TxBxHxD with positive sizes")
    T, B, H = nums[:3]
    D = nums[3] if len(nums) == 4 else H
    mode_t = tuple(m for m in modes.split("+") if m) or None
    for m in mode_t or ():
        if m not in DEFAULT_MODES:
            raise ValueError(f"shape {text!r}: unknown mode {m!r} (forward, train)")
    return Shape(T, B, D, H, modes=mode_t, label="streaming" if B == 1 else "")


def gemm_flops(cell: str, T: int, B: int, D: int, H: int, mode: str) -> float:
    """GEMM FLOPs only: 2*T*B*in*H per matrix (forward), backward twice that (dX and dW)."""
    from ..compiler.parse import parse_cell
    from ..plugins import get_cell
    sides = parse_cell(get_cell(cell)).matrices.values()
    fwd = sum(2.0 * T * B * (D if s == "D" else H) * H for s in sides)
    return fwd if mode == "forward" else 3.0 * fwd


@dataclass
class Options:
    cells: tuple[str, ...] = DEFAULT_CELLS
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES
    modes: tuple[str, ...] = DEFAULT_MODES
    impls: tuple[str, ...] = DEFAULT_IMPLS
    repeats: int = 7
    warmup: int = 2
    # OpenBLAS workers spin ~2^28 cycles (~0.1 s) after a call: with a 10 ms gap the NumPy peer's
    # spinning threads slowed the next implementation by up to 2x (seqengine's LSTM forward at
    # 100x32x128: 13.9 ms in the grid, 6.0 ms alone). A longer idle gap alone made short calls
    # slower instead (idle cores wake slowly: rnn 100x32x128 forward 1.9 -> 11.9 ms), so each timed
    # call follows the gap and one untimed call of the same implementation.
    settle_s: float = 0.12
    gemm_n: int = 2048
    compile_cells: tuple[str, ...] = DEFAULT_CELLS
    compile_shape: Shape = DEFAULT_SHAPES[0]
    memory_shape: Shape | None = Shape(1000, 64, 512, 512)
    memory_cell: str = "lstm"
    threads: int | None = None
    quick: bool = False
    log: object = field(default=sys.stderr, repr=False)


def _say(opts, msg):
    print(msg, file=opts.log, flush=True)


def compare(ref: dict, out: dict, tol: float) -> dict:
    """Worst normalised difference over the arrays seqengine returns; every array must be present."""
    missing = sorted(set(ref) - set(out))
    errors = {}
    for k, r in ref.items():
        if k in out:
            r64, o64 = np.asarray(r, np.float64), np.asarray(out[k], np.float64)
            if r64.shape != o64.shape:
                errors[k] = float("inf")
                continue
            scale = max(float(np.abs(r64).max()), 1e-30)
            errors[k] = float(np.abs(o64 - r64).max() / scale) if np.isfinite(o64).all() else float("inf")
    worst = max(errors, key=errors.get) if errors else None
    err = errors[worst] if worst else float("inf")
    return {"metric": "max|peer - seqengine| / max|seqengine| per array", "tolerance": tol,
            "max_rel_err": err, "worst_array": worst, "arrays_compared": len(errors),
            "missing_arrays": missing, "passed": bool(err <= tol and not missing)}


def _data(cell, sh: Shape, seed=0):
    import seqengine as se
    rnn = se.RNN(cell, sh.D, sh.H, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((sh.T, sh.B, sh.D), dtype=np.float32)
    state0 = {s: 0.1 * rng.standard_normal((sh.B, sh.H), dtype=np.float32) for s in rnn.state_names}
    dy = rng.standard_normal((sh.T, sh.B, sh.H), dtype=np.float32)
    return rnn.params, x, state0, dy


def run_case(cell: str, sh: Shape, mode: str, opts: Options, peak_gflops: float | None) -> dict:
    params, x, state0, dy = _data(cell, sh)
    flops = gemm_flops(cell, sh.T, sh.B, sh.D, sh.H, mode)
    rec = {"cell": cell, "shape": sh.as_dict(), "mode": mode, "gemm_flops": flops, "impls": {}}
    ready = {}
    ref = None
    for name in opts.impls:
        entry = rec["impls"][name] = {"status": None}
        if not peers.supports(name, cell, mode):
            entry["status"] = "unsupported"
            entry["reason"] = ("forward only" if name == "numpy" else f"no {name} version of {cell}")
            continue
        try:
            impl = peers.make_impl(name, cell, params, x, state0, dy)
            call = impl.forward if mode == "forward" else impl.train_step
            out = call()
        except peers.Unsupported as e:
            entry.update(status="unsupported", reason=str(e))
            continue
        except Exception as e:                                   # a broken peer is a result, not a crash
            entry.update(status="error", reason=f"{type(e).__name__}: {e}")
            continue
        if name == "seqengine":
            ref = {k: np.array(v) for k, v in out.items()}
            entry["check"] = {"reference": True, "passed": True}
        elif ref is None:
            entry.update(status="error", reason="seqengine produced no reference to check against")
            continue
        else:
            entry["check"] = compare(ref, out, TOLERANCE[mode])
            if not entry["check"]["passed"]:
                entry["status"] = "failed-check"
                continue
        entry["status"] = "ok"
        ready[name] = call

    names = list(ready)
    times = {n: [] for n in names}
    for _ in range(opts.warmup):
        for n in names:
            time.sleep(opts.settle_s)
            ready[n]()
    for r in range(opts.repeats):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for n in order:
            time.sleep(opts.settle_s)
            ready[n]()                      # untimed: wakes this implementation's threads
            t0 = time.perf_counter()
            ready[n]()
            times[n].append(time.perf_counter() - t0)

    base = {n: statistics.median(times[n]) for n in ("seqengine", "seqengine-cuda") if times.get(n)}
    for n in names:
        med = statistics.median(times[n])
        e = rec["impls"][n]
        e.update(times_s=times[n], median_s=med, min_s=min(times[n]), gflops=flops / med / 1e9)
        if len(times[n]) >= 4:
            q = statistics.quantiles(times[n], n=4)
            e["iqr_s"] = [q[0], q[2]]
        if peak_gflops:
            e["peak_fraction"] = e["gflops"] / peak_gflops
        reference = ratio_reference(n)
        if reference in base:
            e["ratio"] = med / base[reference]                    # peer time / its seqengine's time
    return rec


def ratio_reference(name: str) -> str:
    """The seqengine implementation a peer's ratio is taken against: the torch GPU peers against
    seqengine's CUDA backend (same device), everything else (seqengine-cuda too) against the CPU one."""
    return "seqengine-cuda" if name.endswith("-cuda") and name != "seqengine-cuda" else "seqengine"


def _probe(args: list[str], env: dict, timeout: float = 900) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "seqengine.bench.probe", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:], "process_wall_s": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def compile_times(cell: str, sh: Shape) -> dict:
    """First forward+backward in a fresh process: empty kernel cache, then the cache that run filled."""
    shape = [str(v) for v in (sh.T, sh.B, sh.D, sh.H)]
    with tempfile.TemporaryDirectory(prefix="seqengine-bench-cache-") as cache:
        env = dict(os.environ, SEQENGINE_CACHE_DIR=cache)
        cold = _probe(["compile", "--cell", cell, "--shape", *shape], env)
        warm = _probe(["compile", "--cell", cell, "--shape", *shape], env)
    out = {"cell": cell, "shape": sh.as_dict(), "empty_cache": cold, "warm_cache": warm}
    if "error" not in cold and "error" not in warm:
        out["compile_train_s"] = cold["first_train_step_s"] - cold["steady_train_step_s"]
        out["compile_forward_s"] = cold["first_forward_s"] - cold["steady_forward_s"]
        out["startup_train_s"] = warm["first_train_step_s"] - warm["steady_train_step_s"]
        out["startup_forward_s"] = warm["first_forward_s"] - warm["steady_forward_s"]
    return out


def memory(cell: str, sh: Shape, impls) -> dict:
    shape = [str(v) for v in (sh.T, sh.B, sh.D, sh.H)]
    out = {"cell": cell, "shape": sh.as_dict()}
    for impl in impls:
        out[impl] = _probe(["memory", "--cell", cell, "--shape", *shape, "--impl", impl], dict(os.environ))
    return out


def run(opts: Options) -> dict:
    from . import machine

    threads = opts.threads or machine.cores()
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
        _say(opts, "torch is not installed: the torch peers are skipped (pip install seqengine[torch])")
        opts.impls = tuple(i for i in opts.impls if not i.startswith("torch"))
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    t_start = time.perf_counter()
    result = {"schema": "seqengine-bench/1", "quick": opts.quick,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "seqengine bench " + " ".join(getattr(opts, "argv", []) or []),
              "settings": {"cells": list(opts.cells), "shapes": [s.as_dict() | {"modes": s.modes} for s in opts.shapes],
                           "modes": list(opts.modes), "impls": list(opts.impls), "repeats": opts.repeats,
                           "warmup": opts.warmup, "settle_s": opts.settle_s, "threads": threads,
                           "dtype": "float32", "tolerance": TOLERANCE,
                           "flop_count": "GEMM only: forward 2*T*B*in*H per matrix; train = 3x forward"}}
    result["machine"] = machine.describe(threads)
    _say(opts, f"measuring the float32 GEMM peak ({opts.gemm_n}^3) ...")
    result["gemm_peak"] = machine.gemm_peak(opts.gemm_n, repeats=3 if opts.quick else 5)
    peak = result["gemm_peak"]["peak_gflops"]
    _say(opts, f"  peak {peak:.1f} GFLOP/s (numpy {result['gemm_peak']['numpy_gflops']:.1f}, "
               f"torch {result['gemm_peak']['torch_gflops'] or 0:.1f})")

    result["cases"] = []
    for cell in opts.cells:
        for sh in opts.shapes:
            for mode in opts.modes:
                if sh.modes is not None and mode not in sh.modes:
                    continue
                t0 = time.perf_counter()
                rec = run_case(cell, sh, mode, opts, peak)
                result["cases"].append(rec)
                line = ", ".join(f"{n} {1e3 * e['median_s']:.2f} ms" if e.get("median_s") is not None
                                 else f"{n} {e['status']}" for n, e in rec["impls"].items())
                _say(opts, f"{cell:9s} {sh.text:>14s} {mode:7s} {line}  [{time.perf_counter() - t0:.1f} s]")

    result["compile"] = []
    for cell in opts.compile_cells:
        _say(opts, f"compile time of {cell} (fresh processes, empty then warm cache) ...")
        result["compile"].append(compile_times(cell, opts.compile_shape))
    if opts.memory_shape is not None:
        _say(opts, f"peak memory of a {opts.memory_cell} training step at {opts.memory_shape.text} ...")
        impls = ["seqengine"] + (["torch-native"] if torch is not None and opts.memory_cell in ("lstm", "gru")
                                 else [])
        result["memory"] = memory(opts.memory_cell, opts.memory_shape, impls)
    result["elapsed_s"] = time.perf_counter() - t_start
    return result
