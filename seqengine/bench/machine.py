"""What the numbers were measured on: CPU, cores, thread pools, BLAS, versions; and the float32 GEMM peak."""

from __future__ import annotations

import os
import platform
import time


def cores() -> int:
    """Cores this process may run on (affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                       # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except OSError:
        pass
    return []


def describe(torch_threads: int | None = None) -> dict:
    """Machine, thread pools and versions, as a JSON-able dict (call after the runner's imports)."""
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    import seqengine

    info = {
        "cpu_model": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores_available": cores(),
        "cpu_count_host": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {"seqengine": seqengine.__version__, "numba": numba.__version__, "numpy": np.__version__,
                     "scipy": _version("scipy"), "llvmlite": _version("llvmlite"),
                     "threadpoolctl": _version("threadpoolctl")},
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _numba_layer(),
        "thread_pools": [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                                 "threading_layer", "architecture", "filepath")}
                         for p in threadpool_info()],
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "SEQENGINE_CACHE_DIR")
                if k in os.environ},
    }
    try:
        import torch
        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads() if torch_threads is None else torch_threads
        info["torch_onednn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_parallel_info"] = torch.__config__.parallel_info()
    except ImportError:
        info["versions"]["torch"] = None
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    return info


def _version(dist: str):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _numba_layer() -> str:
    """The threading layer Numba picked; it is only known after a parallel function ran once."""
    import numba
    import numpy as np
    try:
        return numba.threading_layer()
    except ValueError:
        @numba.njit(parallel=True)
        def _touch(a):
            for i in numba.prange(a.shape[0]):
                a[i] += 1.0
        _touch(np.zeros(4))
        return numba.threading_layer()


def gemm_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GEMM rate [GFLOP/s] of an n x n x n product, NumPy's BLAS and torch, all cores.

    The peak of this machine as the runner sees it now (same load, same thread settings);
    `peak_gflops` is the higher of the two libraries.
    """
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    flops = 2.0 * n ** 3
    out = {"n": n, "repeats": repeats}

    def best(fn):
        fn()                                                     # warm-up: thread pool start, page faults
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / min(times) / 1e9

    out["numpy_gflops"] = best(lambda: np.matmul(a, b, out=c))
    try:
        import torch
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        out["torch_gflops"] = best(lambda: torch.mm(ta, tb, out=tc))
    except ImportError:
        out["torch_gflops"] = None
    out["peak_gflops"] = max(v for v in (out["numpy_gflops"], out["torch_gflops"]) if v is not None)
    return out
