"""Throughput of the CUDA GEMM kernels (`seqengine/backends/cuda/gemm.py`) at the products a training step
runs, for several block shapes, next to torch.matmul on the same GPU (TF32 off) when torch has CUDA.

    python benchmarks/gpu_gemm.py [--variants 16x8,16x4,8x8] [--shapes 100x64x256,50x16x512] [--repeats N]

For a cell of G gates at T x B x H (D = H), the products are those of an lstm (G = 4):
    x_proj  [T*B, D] @ [G*H, D]^T     (nt: the hoisted input projection)
    dW      [T*B, G*H]^T @ [T*B, D]   (tn: a weight gradient, its sum split into slices as the runtime does)
    dx      [T*B, G*H] @ [G*H, D]     (nn)
plus a square 4096^3 product. Prints the median time (synchronised, `--repeats` runs after one warm-up)
and TFLOP/s. Under the CUDA simulator it runs too, with meaningless times (a smoke test).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import cuda

from seqengine.backends.cuda import LaunchConfig, compile_cell
from seqengine.bench.runner import parse_shape
from seqengine.plugins import get_cell


def products(shape: str, gates: int = 4):
    sh = parse_shape(shape)
    T, B, H = sh.T, sh.B, sh.H
    rows = T * B
    return [(f"{shape} x_proj", (rows, H), (gates * H, H), False, True),
            (f"{shape} dW", (rows, gates * H), (rows, H), True, False),
            (f"{shape} dx", (rows, gates * H), (gates * H, H), False, False)]


def median_seconds(run, repeats: int) -> float:
    run()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="16x8,16x4,8x8", help="GEMM block shapes: threads x registers a side")
    ap.add_argument("--shapes", default="100x64x256,50x16x512")
    ap.add_argument("--square", type=int, default=4096, help="side of the square product (0: none)")
    ap.add_argument("--repeats", type=int, default=10)
    opts = ap.parse_args()
    cases = [p for s in opts.shapes.split(",") for p in products(s)]
    if opts.square:
        n = opts.square
        cases.append((f"square {n}", (n, n), (n, n), False, False))
    try:
        import torch
        torch_cuda = torch.cuda.is_available()
        torch.backends.cuda.matmul.allow_tf32 = False
    except ImportError:
        torch_cuda = False
    rng = np.random.default_rng(0)
    header = f"{'product':26s} {'M x N x K':>18s}"
    variants = opts.variants.split(",")
    print(header + "".join(f" {v + ' ms':>10s} {'TF/s':>6s}" for v in variants)
          + (f" {'torch ms':>10s} {'TF/s':>6s}" if torch_cuda else ""))
    for label, a_shape, b_shape, trans_a, trans_b in cases:
        a = cuda.to_device(rng.standard_normal(a_shape).astype(np.float32))
        b = cuda.to_device(rng.standard_normal(b_shape).astype(np.float32))
        M = a_shape[1] if trans_a else a_shape[0]
        K = a_shape[0] if trans_a else a_shape[1]
        N = b_shape[0] if trans_b else b_shape[1]
        c = cuda.device_array((M, N), np.float32)
        flops = 2.0 * M * N * K
        want = None
        line = f"{label:26s} {f'{M}x{N}x{K}':>18s}"
        for variant in variants:
            ts, regs = (int(v) for v in variant.split("x"))
            kernels = compile_cell(get_cell("rnn"), "float32", launch=LaunchConfig(gemm_tile=ts, gemm_regs=regs))
            seconds = median_seconds(lambda: kernels._gemm(a, b, c, trans_a, trans_b, False, 0), opts.repeats)
            got = c.copy_to_host()
            if want is None:
                ha, hb = a.copy_to_host().astype(np.float64), b.copy_to_host().astype(np.float64)
                want = (ha.T if trans_a else ha) @ (hb.T if trans_b else hb)
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-4, f"{label} {variant}: relative error {err:.2e}"
            line += f" {1e3 * seconds:10.3f} {flops / seconds / 1e12:6.2f}"
        if torch_cuda:
            ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
            oa, ob = (ta.T if trans_a else ta), (tb.T if trans_b else tb)
            seconds = median_seconds(lambda: torch.matmul(oa, ob), opts.repeats)
            line += f" {1e3 * seconds:10.3f} {flops / seconds / 1e12:6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
