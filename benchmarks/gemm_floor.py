"""GEMM floor of an LSTM training step as seqengine runs it: the same GEMMs, no pointwise work."""
import numpy as np, time, numba
from numba import njit, prange
from seqengine.backends.cpu.threads import single_threaded_blas
from seqengine.backends.cpu import gemm
from seqengine.backends.cpu import tiles
from seqengine.backends.cpu.tiles import gemm_packed

@njit(parallel=True, cache=True)
def steps(S, U, Up, Ut, Utp, P, dP, G, T, nc):
    B = S.shape[1]
    for c in prange(nc):
        b0 = c * B // nc; b1 = (c + 1) * B // nc
        for t in range(T):                       # forward: h @ U^T
            gemm_packed(S[t, b0:b1], U, Up, P[c, :b1 - b0], False)
        for t in range(T - 1, -1, -1):           # backward: dP @ U
            gemm_packed(dP[t, b0:b1], Ut, Utp, G[c, :b1 - b0], False)

def floor(T, B, H, reps=7):
    G4 = 4 * H
    x = np.random.rand(T * B, H).astype(np.float32); W = np.random.rand(G4, H).astype(np.float32)
    U = np.random.rand(G4, H).astype(np.float32) * 0.01
    Ut = U.T; Up = tiles.packed(U); Utp = tiles.packed_columns(U)   # as the runtime packs them
    S = np.random.rand(T + 1, B, H).astype(np.float32); dP = np.random.rand(T, B, G4).astype(np.float32)
    nc = min(2, B); P = np.empty((nc, (B + nc - 1) // nc, G4), np.float32); Gb = np.empty((nc, (B + nc - 1) // nc, H), np.float32)
    def run():
        with single_threaded_blas():
            gemm.rows(x, W.T)                              # hoisted x products
            steps(S, U, Up, Ut, Utp, P, dP, Gb, T, nc)                  # per-step products, forward and backward
            gemm.rows(dP.reshape(T * B, G4), W)            # dx
            gemm.tn_many(dP.reshape(T * B, G4), [x, S[:T].reshape(T * B, H)])   # dW, dU (dP packed once)
    run(); ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
    t = np.median(ts); fl = 3 * 2 * T * B * 2 * H * G4
    return t * 1e3, fl / t / 1e9

for shape in [(100, 32, 128), (100, 64, 256), (50, 16, 512), (200, 8, 64)]:
    ms, gf = floor(*shape)
    print(f"{shape}: GEMMs alone {ms:.1f} ms ({gf:.0f} GFLOP/s)")
