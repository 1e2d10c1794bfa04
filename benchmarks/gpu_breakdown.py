"""Where one CUDA training step's time goes: the runtime's GEMMs, weight stacking, step kernels and
the rest, each part bracketed by device synchronisations (median of `--repeats` steps, one process).

    python benchmarks/gpu_breakdown.py [cells] [TxBxH ...] [--repeats N] [--launches 32x4x4,32x2x8] [--profile N]
    # default: lstm,gru_cho,rnn at 200x8x64 100x64x256 50x16x512, 10 steps, the default LaunchConfig

`--launches` lists step-kernel block shapes, units x rows x splits (`LaunchConfig`), each run in turn;
the block shape is a launch parameter, so the variants share their compiled kernels.

Inputs, states, parameters and dy live on the device (as in `seqengine bench --gpu`, minus the copy of
the results to the host). Each step is timed twice: once as it runs (one synchronisation at the end:
"step, as run"), once with every part below followed by a synchronisation ("step, parts synced"):

    x_proj / dx GEMMs         `CudaKernels._gemm` without a transposed A: the hoisted x products, dx
    dW GEMMs                  `CudaKernels._gemm` with A transposed: the weight gradients
    stack weights             `CudaKernels._stack` (a group's matrices into one array, per call)
    forward / backward steps  the persistent kernels; "steps (a launch each)" where they do not run
    rest                      "parts synced" less the parts: allocation, the initial-state kernel,
                              final-state gathers, vector-gradient sums, scatters, Python

Under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) it runs too, with meaningless times (a smoke test).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import statistics
import time

import numpy as np
from numba import cuda

from seqengine import functional
from seqengine.backends.cuda import LaunchConfig, compile_cell, runtime
from seqengine.bench.runner import parse_shape
from seqengine.plugins import get_cell

spent = collections.defaultdict(float)     # seconds per part within the current step
synced = False                             # bracket each part by synchronisations


def timed(owner, name, label):
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if not synced:
            return inner(*args, **kwargs)
        cuda.synchronize()
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        cuda.synchronize()
        spent[label(args) if callable(label) else label] += time.perf_counter() - t0
        return out
    setattr(owner, name, wrapper)


K = runtime.CudaKernels
timed(K, "_stack", "stack weights")
timed(K, "_persistent", lambda a: f"{'forward' if a[1].startswith('forward') else 'backward'} steps (persistent)")
timed(runtime.StepLaunch, "__call__", "steps (a launch each)")
# the hoisted x products are the GEMM without trans_a; the weight gradients have trans_a, dx follows them
timed(K, "_gemm", lambda a: "dW GEMMs" if a[4] else ("x_proj / dx GEMMs"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="?", default="lstm,gru_cho,rnn")
    ap.add_argument("shapes", nargs="*", default=["200x8x64", "100x64x256", "50x16x512"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--launches", default="", help="step block shapes units x rows x splits, comma-separated "
                    "(default, or 'auto' in the list: the default LaunchConfig, which picks rows and splits per shape)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile the host over N steps as run (cProfile: top functions by own time)")
    opts = ap.parse_args()
    launches = [None if spec == "auto" else LaunchConfig(*(int(v) for v in spec.split("x")))
                for spec in opts.launches.split(",") if spec] or [None]
    global synced
    for name in opts.cells.split(","):
        cell = get_cell(name)
        for launch, shape in [(launch, shape) for shape in opts.shapes for launch in launches]:
            kernels = compile_cell(cell, "float32", launch=launch)
            sh = parse_shape(shape)
            T, B, H = sh.T, sh.B, sh.H
            rng = np.random.default_rng(0)
            params = functional.init_params(cell, H, H, rng=rng)
            dev = {k: cuda.to_device(v) for k, v in params.items()}
            x = cuda.to_device(rng.standard_normal((T, B, H)).astype(np.float32))       # [T, B, D]
            dy = cuda.to_device(rng.standard_normal((T, B, H)).astype(np.float32))      # [T, B, H]
            state0 = {s: cuda.to_device(np.zeros((B, H), np.float32)) for s in cell.state}
            dfinal = {s: cuda.to_device(np.zeros((B, H), np.float32)) for s in cell.state}

            def step():
                t0 = time.perf_counter()
                _, _, tape = kernels.forward(dev, x, state0, True)
                cuda.synchronize()
                t1 = time.perf_counter()
                kernels.backward(dev, tape, dy, dfinal)
                cuda.synchronize()
                return t1 - t0, time.perf_counter() - t1

            step()                                                       # compile, warm up
            parts = collections.defaultdict(list)
            for rep in range(opts.repeats):
                synced = False
                f, b = step()
                parts["step, as run"].append(f + b)
                parts["  forward"].append(f)
                parts["  backward"].append(b)
                synced = True
                spent.clear()
                f, b = step()
                parts["step, parts synced"].append(f + b)
                for k, v in spent.items():
                    parts["  " + k].append(v)
                parts["  rest"].append(f + b - sum(spent.values()))
            synced = False
            u, r, z = kernels.launch.step_block(B, H, kernels.multiprocessors())
            print(f"== {name} {T}x{B}x{H}, steps in blocks of {u} x {r} x {z} threads")
            for k, v in parts.items():
                print(f"  {k:34s} {1e3 * statistics.median(v):8.3f} ms")
            if opts.profile:
                host_profile(step, opts.profile)


def host_profile(step, repeats: int, top: int = 25):
    """The host's time in a training step, by function (cProfile over `repeats` steps as run): where
    a step's Python, numba-cuda dispatch and driver calls go. The GPU overlaps all but the waits."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        step()
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("seqengine|launch|dispatcher", top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())
          .replace(os.path.dirname(np.__file__).rsplit("/", 1)[0] + "/", ""))


if __name__ == "__main__":
    main()
