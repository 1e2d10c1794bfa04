"""GEMM floor of an LSTM training step as seqengine runs it: the same GEMMs, no pointwise work.

    python benchmarks/gemm_floor.py

Per-step products both ways the runtime splits them (rows: each thread its batch rows times all of U;
units: each thread all rows times its columns of U, as the team kernels do); the floor takes the
faster. Hoisted and deferred GEMMs as gemm.py runs them (x products, dx, dW and dU from one packing).
"""
import time

import numpy as np
from numba import njit, prange

from seqengine.backends.cpu import gemm, tiles
from seqengine.backends.cpu.threads import single_threaded_blas
from seqengine.backends.cpu.tiles import gemm_packed


@njit(parallel=True, cache=True)
def steps_by_rows(S, U, Up, Ut, Utp, P, dP, G, T, nc):
    B = S.shape[1]
    for c in prange(nc):
        b0 = c * B // nc
        b1 = (c + 1) * B // nc
        for t in range(T):                       # forward: h @ U^T
            gemm_packed(S[t, b0:b1], U, Up, P[c, :b1 - b0], False)
        for t in range(T - 1, -1, -1):           # backward: dP @ U
            gemm_packed(dP[t, b0:b1], Ut, Utp, G[c, :b1 - b0], False)


@njit(parallel=True, cache=True)
def steps_by_units(S, U, Up, Ut, Utp, P, dP, G, T, nc):
    NR = Up.shape[2]
    H = Ut.shape[0]
    panels = H // NR
    for c in prange(nc):                         # (no barrier: the GEMMs alone)
        j0 = c * panels // nc * NR
        j1 = (c + 1) * panels // nc * NR
        for t in range(T):
            for k in range(4):                   # this thread's columns of each gate block
                q0 = k * H + j0
                q1 = k * H + j1
                gemm_packed(S[t], U[q0:q1], Up[q0 // NR:q1 // NR], P[0, :, q0:q1], False)
        for t in range(T - 1, -1, -1):
            gemm_packed(dP[t], Ut[j0:j1], Utp[j0 // NR:j1 // NR], G[0, :, j0:j1], False)


def timed(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def floor(T, B, H, reps=7):
    G4 = 4 * H
    x = np.random.rand(T * B, H).astype(np.float32)
    W = np.random.rand(G4, H).astype(np.float32)
    U = np.random.rand(G4, H).astype(np.float32) * 0.01
    Ut = U.T                                                         # as the runtime packs them
    Up = tiles.packed(U)
    Utp = tiles.packed_columns(U)
    S = np.random.rand(T + 1, B, H).astype(np.float32)             # [T + 1, B, H] states
    dP = np.random.rand(T, B, G4).astype(np.float32)                # [T, B, 4H] product adjoints
    nc = min(2, B)
    P = np.empty((nc, B, G4), np.float32)
    Gb = np.empty((nc, B, H), np.float32)
    with single_threaded_blas():
        per_step = {name: timed(lambda: fn(S, U, Up, Ut, Utp, P, dP, Gb, T, nc), reps)
                    for name, fn in (("rows", steps_by_rows), ("units", steps_by_units))}
        hoisted = timed(lambda: (gemm.rows(x, W.T),                                     # x products
                                 gemm.rows(dP.reshape(T * B, G4), W),                   # dx
                                 gemm.tn_many(dP.reshape(T * B, G4), [x, S[:T].reshape(T * B, H)])),  # dW, dU
                        reps)
    t = min(per_step.values()) + hoisted
    flops = 3 * 2 * T * B * 2 * H * G4
    return t * 1e3, flops / t / 1e9, {k: v * 1e3 for k, v in per_step.items()}, hoisted * 1e3


if __name__ == "__main__":
    for shape in [(100, 32, 128), (100, 64, 256), (50, 16, 512), (200, 8, 64)]:
        ms, gf, per_step, hoisted = floor(*shape)
        print(f"{shape}: GEMMs alone {ms:.1f} ms ({gf:.0f} GFLOP/s); per-step products by rows "
              f"{per_step['rows']:.1f} ms, by units {per_step['units']:.1f} ms; hoisted and deferred {hoisted:.1f} ms")
