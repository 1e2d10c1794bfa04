"""The float32 exp32 / tanh32 / sigmoid32 of seqengine.backends.cpu.fastmath against float64 NumPy.

Each function runs inside a small @njit loop over a float32 array, as the generated kernels call
it: inlined into the loop and vectorized, under the kernels' fast-math flags (the caller's flags
apply to inlined code), and once more under strict IEEE flags. Wherever the exact result, rounded
to float32, is a normal float32 it must be within 1e-6 relative; NaN and +-inf must come out right.
"""

import ast

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

from seqengine.backends.cpu import fastmath
from seqengine.backends.cpu.emit import FASTMATH

TOL = 1e-6
TINY = np.finfo(np.float32).tiny          # smallest normal float32
FLAGS = {"kernel": ast.literal_eval(FASTMATH), "strict": False}
FUNCS = {
    "exp32": lambda x: np.exp(x),
    "tanh32": lambda x: np.tanh(x),
    "sigmoid32": lambda x: 1.0 / (1.0 + np.exp(-x)),
}
_loops = {}


def loop(name, flags):
    """@njit(out[i] = fn(x[i])) under the named flags, compiled once per test session."""
    if (name, flags) not in _loops:
        fn = getattr(fastmath, name)

        @njit(fastmath=FLAGS[flags], error_model="numpy")
        def run(x, out):
            for i in range(x.size):
                out[i] = fn(x[i])
        _loops[name, flags] = run
    return _loops[name, flags]


def call(name, flags, x):
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    loop(name, flags)(x, out)
    return out


def inputs():
    """Dense grids, tiny magnitudes, the neighbourhoods of every threshold (clamps; where a result
    rounds to 1, needs k = 128 or leaves the normal range), random float32 bit patterns."""
    rng = np.random.default_rng(0)
    edges = np.array([0.625, 9.0, 9.02, 10.0, 17.0, 20.0, 87.3365, 88.0, 88.3763, 88.7228, 100.0, 103.9721, 104.0])
    near = np.outer(np.concatenate([edges, -edges]), 1 + np.linspace(-1e-5, 1e-5, 2001))
    tiny = np.geomspace(1e-37, 1.0, 20001)
    bits = rng.integers(0, 2 ** 32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    parts = [np.linspace(-20, 20, 400001), np.linspace(-88, 88, 400001), np.linspace(-110, 110, 100001),
             tiny, -tiny, [1e-30, -1e-30, 1e-7, -1e-7], near.ravel(), bits[np.isfinite(bits)],
             rng.standard_normal(100000) * 5]
    return np.concatenate([np.asarray(p, np.float32) for p in parts])


X = inputs()


@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_within_1e_6_relative_wherever_the_result_is_normal(name, flags):
    with np.errstate(over="ignore"):
        exact = FUNCS[name](X.astype(np.float64))
        ref = exact.astype(np.float32)
    normal = np.isfinite(ref) & (np.abs(exact) >= TINY)
    got = call(name, flags, X)
    err = np.abs(got[normal].astype(np.float64) - ref[normal]) / np.abs(ref[normal])
    worst = int(np.argmax(err))
    assert err[worst] <= TOL, f"{name} ({flags}) at x={X[normal][worst]!r}: {got[normal][worst]!r} vs {ref[normal][worst]!r}"


@pytest.mark.parametrize("flags", sorted(FLAGS))
def test_special_values(flags):
    inf, nan = np.inf, np.nan
    x = np.array([inf, -inf, nan, -nan, 0.0, -0.0], np.float32)
    e, t, s = (call(name, flags, x) for name in ("exp32", "tanh32", "sigmoid32"))
    np.testing.assert_array_equal(e[[0, 1, 4, 5]], [inf, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(t[[0, 1, 4, 5]], [1.0, -1.0, 0.0, 0.0])
    assert s[0] == 1.0 and 0.0 <= s[1] < TINY and s[4] == s[5] == 0.5
    assert np.isnan(e[2:4]).all() and np.isnan(t[2:4]).all() and np.isnan(s[2:4]).all()
    # NaNs with any payload (the exponent-bit tricks must not turn one into a number)
    payloads = np.random.default_rng(1).integers(1, 2 ** 23, 1000, dtype=np.uint32)
    nans = np.concatenate([payloads | 0x7F800000, payloads | 0xFF800000]).astype(np.uint32).view(np.float32)
    for name in FUNCS:
        assert np.isnan(call(name, flags, nans)).all(), name
    # past the float32 range the exact values overflow or are not normal: inf / 0 or below TINY / +-1
    big = np.array([89.0, 1e10, 3e38], np.float32)
    assert (call("exp32", flags, big) == inf).all() and (call("exp32", flags, -big) < TINY).all()
    assert (call("tanh32", flags, big) == 1.0).all() and (call("tanh32", flags, -big) == -1.0).all()
    assert (call("sigmoid32", flags, big) == 1.0).all()
    assert ((0.0 <= call("sigmoid32", flags, -big)) & (call("sigmoid32", flags, -big) < TINY)).all()


def test_loops_vectorize_under_the_kernel_flags():
    features = llvm.get_host_cpu_features()
    if not features.get("avx2"):
        pytest.skip("no AVX2 on this CPU")
    for name in FUNCS:
        run = loop(name, "kernel")
        run(np.ones(64, np.float32), np.empty(64, np.float32))
        asm = run.inspect_asm(run.signatures[0])
        assert "ps\t%ymm" in asm or "ps\t%zmm" in asm, f"{name}: loop stayed scalar"


def test_derive_coefficients_reproduces_the_constants():
    for derived, written in zip(fastmath.derive_coefficients(), (fastmath.EXP_COEFFS, fastmath.TANH_P, fastmath.TANH_Q)):
        np.testing.assert_allclose(derived, written, rtol=1e-7)    # written to 8 significant digits
