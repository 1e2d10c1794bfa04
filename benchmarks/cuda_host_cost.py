"""The CUDA runtime's own host work per training call, without a GPU: kernels replaced by no-ops.

    NUMBA_ENABLE_CUDASIM=1 python benchmarks/cuda_host_cost.py [cells] [TxBxH ...]
    # default: rnn,lstm,gru_cho at 50x16x512 100x64x256

Runs `CudaKernels.forward` + `backward` under the CUDA simulator (device arrays are NumPy arrays there)
with every kernel launch recorded and skipped, and prints:
- the median wall time of a call: seqengine's Python (argument lists, views, the pool's bookkeeping
  stood in for by a cache of arrays by shape, as its free lists serve a steady training loop; the
  simulator's own allocations would fault pages), not numba-cuda's dispatch nor the driver, which only
  a GPU can time;
- the launches a call makes and the device-array arguments they pass: through numba-cuda's dispatcher,
  each launch types and marshals every argument (session 4 on an H200: 99.8 us for a 20-array launch,
  10.2 bound); since session 8 the runtime binds them (`launch.py`), marshalling each array itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from numba import config, cuda

import seqengine as se
from seqengine import functional
from seqengine.backends.cuda import compile_cell, pool
from seqengine.bench.runner import parse_shape


class RecordedKernel:
    """Stands in for a kernel: ``kernel[config](*args)`` records (name, device-array arguments)."""

    launches: list = []

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, launch_config):
        def launch(*args):
            arrays = [b for a in args for b in (a if isinstance(a, tuple) else (a,))]   # stack_kernel: a tuple
            RecordedKernel.launches.append((self.name, sum(1 for a in arrays if getattr(a, "ndim", 0) > 0)))
        return launch


class Recorded:
    """A kernel module whose ``*_kernel`` attributes are recorded, the rest as they are."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        value = getattr(self._module, name)
        return RecordedKernel(name) if name.endswith("_kernel") else value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="?", default="rnn,lstm,gru_cho")
    ap.add_argument("shapes", nargs="*", default=["50x16x512", "100x64x256"])
    ap.add_argument("--repeats", type=int, default=7)
    opts = ap.parse_args()
    if not config.ENABLE_CUDASIM:
        raise SystemExit("run with NUMBA_ENABLE_CUDASIM=1 (kernels are skipped; the arrays are the simulator's)")
    served = {}

    def empty(shape, dtype, stream=0):   # a steady loop's pool: the same sizes, served without allocating
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in served:
            served[key] = []
        free = [a for a in served[key] if sys.getrefcount(a) == 3]   # held only by `served` and this list
        if free:
            return free[0]
        served[key].append(cuda.device_array(shape, dtype=dtype))
        return served[key][-1]
    pool.POOL.empty = empty
    for name in opts.cells.split(","):
        cell = se.get_cell(name)
        for shape in opts.shapes:
            sh = parse_shape(shape)
            T, B, H = sh.T, sh.B, sh.H
            cached = compile_cell(cell, "float32")
            kernels = cached.with_launch(cached.launch)      # a copy: the cached kernels stay as they are
            kernels.module, kernels.gemm = Recorded(kernels.module), Recorded(kernels.gemm)
            rng = np.random.default_rng(0)
            params = {k: cuda.to_device(v) for k, v in functional.init_params(cell, H, H, rng=rng).items()}
            x = cuda.to_device(np.zeros((T, B, H), np.float32))          # [T, B, D]
            dy = cuda.to_device(np.zeros((T, B, H), np.float32))         # [T, B, H]
            state0 = {s: cuda.to_device(np.zeros((B, H), np.float32)) for s in cell.state}
            times = []
            for _ in range(opts.repeats):
                RecordedKernel.launches.clear()
                t0 = time.perf_counter()
                _, _, tape = kernels.forward(params, x, state0, True)
                kernels.backward(params, tape, dy, state0)
                times.append(time.perf_counter() - t0)
            launches = RecordedKernel.launches
            print(f"{name} {shape}: {1e3 * statistics.median(times):.2f} ms of seqengine Python a call; "
                  f"{len(launches)} launches, {sum(n for _, n in launches)} device-array arguments")
            print("    " + ", ".join(f"{k.removesuffix('_kernel')}({n})" for k, n in launches))


if __name__ == "__main__":
    main()
