"""Where one CPU training step's time goes: the runtime's GEMM calls, weight packs and generated kernels
timed inside whole forward + backward calls (wrappers around them, one process, median of 22 steps).

    python benchmarks/step_breakdown.py [cells] [TxBxH]      # default: rnn,coupled,peephole 100x64x256

Parts: "x_proj nt" the hoisted input products; "kernel <name>" a generated step kernel (its per-step
products and pointwise work); "dx rows" dx = d_x_proj @ W_x; "dW tn_many" the weight gradients; "pack"
the weight packs. What the named parts leave of "step" is Python and small arrays.
"""

import collections
import sys
import time

import numpy as np

from seqengine import functional
from seqengine.backends.cpu import gemm, runtime, tiles
from seqengine.plugins import get_cell

cells = sys.argv[1].split(",") if len(sys.argv) > 1 else ["rnn", "coupled", "peephole"]
T, B, H = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "100x64x256").split("x"))
D = H
spent = collections.defaultdict(float)     # seconds per part within the current step


def timed(owner, name, label):
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[label] += time.perf_counter() - t0
        return out
    setattr(owner, name, wrapper)


timed(gemm, "nt", "x_proj nt")
timed(gemm, "rows", "dx rows")
timed(gemm, "tn_many", "dW tn_many")
for owner, name in ((tiles, "packed"), (tiles, "packed_columns"), (gemm, "panels"), (gemm, "column_panels")):
    timed(owner, name, "pack")
launch = runtime.CpuKernels._launch


def timed_launch(self, kernel, arrays, chunks):
    t0 = time.perf_counter()
    out = launch(self, kernel, arrays, chunks)
    spent["kernel " + kernel] += time.perf_counter() - t0
    return out


runtime.CpuKernels._launch = timed_launch
rng = np.random.default_rng(0)
for name in cells:
    cell = get_cell(name)
    params = functional.init_params(cell, D, H, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(np.float32)       # [T, B, D]
    state0 = {s: np.zeros((B, H), np.float32) for s in cell.state}
    dy = rng.standard_normal((T, B, H)).astype(np.float32)      # [T, B, H]
    parts = collections.defaultdict(list)
    for rep in range(25):
        spent.clear()
        t0 = time.perf_counter()
        y, final, tape = functional.forward(cell, params, x, state0, training=True)
        t1 = time.perf_counter()
        functional.backward(cell, params, tape, dy, {s: np.zeros_like(v) for s, v in final.items()})
        t2 = time.perf_counter()
        if rep < 3:                                               # compile and warm up
            continue
        parts["step"].append(t2 - t0)
        parts["forward"].append(t1 - t0)
        parts["backward"].append(t2 - t1)
        for k, v in spent.items():
            parts[k].append(v)
    print(f"== {name} {T}x{B}x{H}")
    for k, v in parts.items():
        print(f"  {k:26s} {1e3 * np.median(v):7.2f} ms")
