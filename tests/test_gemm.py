"""The CPU GEMM kernels (tiles.gemm_nt and gemm.nt / rows / tn) against NumPy in float64.

Shapes cover every tile edge (M, N not multiples of the 4 x 4 tile), sums longer than one K block,
empty sums, one row, several threads' row blocks, and the accumulate flag.
"""

import numpy as np
import pytest

from seqengine.backends.cpu import gemm, tiles
from seqengine.backends.cpu.tiles import gemm_nt

SHAPES = [(1, 1, 1), (1, 7, 5), (3, 5, 2), (4, 4, 16), (5, 9, 33), (13, 6, 7), (64, 4, 3), (70, 130, 1),
          (9, 10, tiles.K_BLOCK + 3), (2, 3, 2 * tiles.K_BLOCK + 1)]


def _data(M, N, K, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((N, K)).astype(dtype))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gemm_nt_matches_numpy(M, N, K, dtype, tol):
    A, B = _data(M, N, K, dtype)
    ref = A.astype(np.float64) @ B.astype(np.float64).T
    scale = max(1.0, np.abs(ref).max())
    C = np.full((M, N), np.nan, dtype)                    # every element must be written
    gemm_nt(A, B, C, False)
    assert np.abs(C - ref).max() / scale < tol
    gemm_nt(A, B, C, True)                                 # accumulate: C += A @ B^T
    assert np.abs(C - 2 * ref).max() / scale < 2 * tol


def test_gemm_nt_writes_into_a_column_slice_only():
    A, B = _data(6, 5, 9, np.float64)
    C = np.zeros((6, 12))
    gemm_nt(A, B, C[:, 3:8], False)
    np.testing.assert_allclose(C[:, 3:8], A @ B.T, rtol=1e-12, atol=1e-12)
    assert not C[:, :3].any() and not C[:, 8:].any()


def test_gemm_nt_empty_sum_gives_zeros():
    C = np.ones((3, 4))
    gemm_nt(np.zeros((3, 0)), np.zeros((4, 0)), C, False)
    assert not C.any()


@pytest.mark.parametrize("M", [1, 37, 3000])                 # 3000 x 40 x 50 is split over threads
def test_nt_rows_and_tn_match_numpy(M):
    rng = np.random.default_rng(M)
    A = rng.standard_normal((M, 40))
    W = rng.standard_normal((50, 40))
    np.testing.assert_allclose(gemm.nt(A, W), A @ W.T, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(gemm.rows(A, W.T), A @ W.T, rtol=1e-11, atol=1e-11)        # B a transposed view
    np.testing.assert_allclose(gemm.rows(A, np.ascontiguousarray(W.T)), A @ W.T, rtol=1e-11, atol=1e-11)
    # dx from row blocks of W_x (runtime, GRU after Cho): out += A[:, 25:] @ B[25:], panels sliced along K
    B = np.ascontiguousarray(W.T)                            # [40, 50]
    Bp = gemm.column_panels(B, M)
    out = gemm.rows(A[:, :25].copy(), B[:25], Bp=Bp[:, :25])
    gemm.rows(A[:, 25:].copy(), B[25:], out=out, Bp=Bp[:, 25:], accumulate=True)
    np.testing.assert_allclose(out, A @ B, rtol=1e-11, atol=1e-11)
    X = rng.standard_normal((M, 70))                         # more rows than one transposed block when M = 3000
    Y = rng.standard_normal((M, 3))
    np.testing.assert_allclose(gemm.tn(A, X), A.T @ X, rtol=1e-11, atol=1e-10)
    both = gemm.tn_many(A, [X, Y])                           # A packed once for two operands
    np.testing.assert_allclose(both[0], A.T @ X, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(both[1], A.T @ Y, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_tn_many_over_several_depth_blocks_and_threads(dtype, tol):
    """Depth M past one TN_BLOCK, result rows split over threads at whole register blocks, transposed
    tiles with row and column rests, operands with and without a column tail after the panels."""
    rng = np.random.default_rng(7)
    M = gemm.TN_BLOCK + 21
    A = rng.standard_normal((M, 4 * 32 + 13)).astype(dtype)
    Bs = [rng.standard_normal((M, k)).astype(dtype) for k in (64, 45, 2)]
    outs = gemm.tn_many(A, Bs)
    for out, B in zip(outs, Bs):
        ref = A.astype(np.float64).T @ B.astype(np.float64)
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())
    gemm.tn_many(A, Bs, outs=outs, accumulate=True)          # added to what is there (later windows)
    for out, B in zip(outs, Bs):
        ref = 2 * (A.astype(np.float64).T @ B.astype(np.float64))
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_tn_of_no_rows_is_zero():
    out = gemm.tn(np.zeros((0, 4)), np.zeros((0, 3)))
    assert out.shape == (4, 3) and not out.any()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 8, 13, 15, 16, 97, 194])   # every row rest, several 96-row blocks
def test_gemm_packed_matches_numpy(M, dtype, tol):
    NR = tiles.panel_width(np.dtype(dtype).itemsize)
    for N, K in [(5 * NR + 3, 17), (4 * NR, 1), (NR - 1, 9), (2 * NR, 0)]:   # column tail, one panel too few
        A, B = _data(M, N, K, dtype, seed=M)
        ref = A.astype(np.float64) @ B.astype(np.float64).T
        scale = max(1.0, np.abs(ref).max())
        Bp = tiles.packed(B)
        assert Bp.shape == (N // NR, K, NR)
        np.testing.assert_array_equal(tiles.packed_columns(np.ascontiguousarray(B.T)), Bp)
        C = np.full((M, N), np.nan, dtype)
        tiles.gemm_packed(A, B, Bp, C, False)
        assert np.abs(C - ref).max() / scale < tol, (N, K)
        tiles.gemm_packed(A, B, Bp, C, True)
        assert np.abs(C - 2 * ref).max() / scale < 2 * tol, (N, K)
        C2 = np.full((M, N), np.nan, dtype)                       # no panels: all by the dot-form tiles
        tiles.gemm_packed(A, B, tiles.no_panels(K, dtype), C2, False)
        assert np.abs(C2 - ref).max() / scale < tol
    strided = np.zeros((M, 3 * NR + 8), dtype)                       # rows of C with a longer stride
    A, B = _data(M, 2 * NR, 11, dtype)
    tiles.gemm_packed(A, B, tiles.packed(B), strided[:, 4:4 + 2 * NR], False)
    assert np.abs(strided[:, 4:4 + 2 * NR] - A.astype(np.float64) @ B.T).max() < tol * 100
    assert not strided[:, :4].any() and not strided[:, 4 + 2 * NR:].any()


def test_generated_tiles_module_is_current():
    """The committed seqengine/backends/cpu/_tiles_generated.py is what the generator writes now
    (rewrite it with `python -m seqengine.backends.cpu.tiles`)."""
    with open(tiles.GENERATED_PATH) as f:
        assert f.read() == tiles.generate_source()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block_with_register_tiles_and_edges(dtype):
    """gemm._transpose_block: whole L x L register tiles (tiles.transpose_tile) at offsets, and rests of
    rows and columns, against NumPy."""
    rng = np.random.default_rng(11)
    L = tiles.VECTOR_BYTES // np.dtype(dtype).itemsize
    A = rng.standard_normal((3 * L + 5, 4 * L + 3)).astype(dtype)
    m0, m1, r0, r1 = 2, 3 * L + 4, L + 1, 4 * L + 3                  # tiles not aligned to A's origin
    at = np.full((r1 - r0, m1 - m0), np.nan, dtype)
    gemm._transpose_block(A, m0, m1, r0, r1, at)
    np.testing.assert_array_equal(at, A[m0:m1, r0:r1].T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [0, 5, 16, 37, 512 + 5])
def test_pack_register_transposes_match_numpy(dtype, K):
    """tiles.pack (L x L register transposes, then the last K % L columns one at a time), on one thread and
    split over threads (tiles._pack_parallel), against NumPy's transposed panels; a B that is not
    C-contiguous is packed from a contiguous copy."""
    NR = tiles.panel_width(np.dtype(dtype).itemsize)
    rng = np.random.default_rng(K)
    for N in (NR - 1, NR, 3 * NR + 7, 2 * tiles.PARALLEL_PACK // max(K, 1) // NR * NR + NR):
        B = rng.standard_normal((N, K)).astype(dtype)
        P = N // NR
        ref = B[:P * NR].reshape(P, NR, K).transpose(0, 2, 1)           # ref[p, k, c] = B[p * NR + c, k]
        np.testing.assert_array_equal(tiles.packed(B), ref)
        Bp = np.full((P, K, NR), np.nan, dtype)
        tiles._pack_parallel(B, Bp, 2, False)
        np.testing.assert_array_equal(Bp, ref)
        Bp = np.full((P, K, NR), np.nan, dtype)                          # panels p0:p1 only
        if P >= 2:
            tiles.pack(B, Bp, 1, P)
            np.testing.assert_array_equal(Bp[1:], ref[1:])
            assert np.isnan(Bp[0]).all()
    wide = rng.standard_normal((2 * NR, 2 * K + 1)).astype(dtype)[:, ::2]   # column stride 2
    np.testing.assert_array_equal(tiles.packed(wide), np.ascontiguousarray(wide).reshape(2, NR, -1).transpose(0, 2, 1))
