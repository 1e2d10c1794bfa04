"""float32 exp, tanh and sigmoid that LLVM can vectorize.

    exp(x)     = 2^k e^r,   k = round(x / ln 2),  r = x - k ln 2 in [-ln2/2, ln2/2]
                 e^r = 1 + r (1 + r (c2 + r (c3 + r (c4 + r c5))))
    tanh(x)    = sign(x) min(1, a P(a^2) / Q(a^2)),   a = min(|x|, 10),
                 P and Q of degree 4, Q(0) = 1
    sigmoid(x) = 1 / (1 + e^-y),   y = x clamped to [-88, 20]

The coefficients are fits on Chebyshev nodes (`derive_coefficients`, checked by the tests): e^r by
least squares in relative error; P/Q minimises the relative error of tanh on [0, 9.02] (linearised
least squares, reweighted by the previous Q until it settles), beyond which float32 tanh is 1.
The float32 results stay within 1e-6 relative of the exact functions wherever those are normal
float32 numbers (measured on every float32 of magnitude 2^-20 to 128: exp 1.9e-7, sigmoid 2.7e-7,
tanh 3e-7), and NaN and +-inf come out as they should: exp(+inf) = inf, exp(-inf) = 0,
tanh(+-inf) = +-1, sigmoid(+inf) = 1, and for x < -88, where the exact sigmoid is below the
smallest normal float32, sigmoid(x) = 1 / (1 + e^88) = 6.1e-39, a denormal.

Why: Numba lowers ``math.exp``/``math.tanh`` to libm calls, which keep a gate loop scalar (no SVML
in llvmlite here), and that scalar loop cost as much as the GEMMs. These versions are plain
arithmetic plus bit-level intrinsics, so the fused loops compile to packed AVX-512/AVX2 code, and
they are written for few instructions (the gate loops are compute-bound):
- k = round(x / ln 2) by the magic number M = 1.5 * 2^23 + 127: t = x log2(e) + M rounds x log2(e)
  to an integer in t's low mantissa bits, k = t - M, and those bits shifted into the exponent field
  are 2^k (the 127 is the exponent bias): one fused multiply-add, one subtraction, one shift.
- tanh needs no exp: the rational function is 4 + 4 multiply-adds and one division, and it rises
  past 1 beyond the fit (1 + 2e-6 at 10), so clamping |x| at 10 and the result at 1 gives exactly
  +-1 for large |x|, inf included.
- sigmoid scales by a single 2^k (k in [-29, 127] after its clamp); only exp32 needs the full
  range, where 2^k is taken as two factors so that k = 128 and k < -126 stay representable.
- The kernels compile these inlined, so the caller's fast-math flags apply, and the kernels allow
  "reassoc". The intrinsics emit the operations that must not be reassociated with flags of their
  own (Numba adds the caller's only to flagless operations): otherwise LLVM folds (y + M) - M into
  y, merges the two steps of r = (x - k ln2_hi) - k ln2_lo, and multiplies 2^k1 * 2^k2 first (which
  overflows at k = 128).
- Clamps are ``min(max(v, lo), hi)``: Numba's min/max are selects that return v when v is NaN,
  LLVM emits one vmaxps/vminps each, and a NaN carries on to the result (2^k from a NaN's bits is
  garbage, but it multiplies a NaN). Conditional expressions instead became compare-and-blend code.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

EXP_COEFFS = (0.49999143, 0.16666886, 0.041898578, 0.008333838)   # c2 .. c5
TANH_P = (0.99999999, 0.13383723, 0.0034986568, 2.065408e-05, 1.3406614e-08)
TANH_Q = (0.46717044, 0.025889008, 0.00032904167, 7.8000216e-07)   # q1 .. q4, q0 = 1
TANH_FIT = 9.02     # tanh(x) rounds to 1.0 in float32 from x = 9.011 on
TANH_CLAMP = 10.0


def derive_coefficients(nodes: int = 4000, rounds: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EXP_COEFFS, TANH_P and TANH_Q (without q0 = 1): fits minimising the relative error."""
    cheb = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    r = 0.5 * np.log(2.0) * cheb
    w = r ** 2 / np.exp(r)
    V = np.vander(r, 4, increasing=True)
    exp_c = np.linalg.lstsq(V * w[:, None], (np.exp(r) - 1 - r) / r ** 2 * w, rcond=None)[0]
    # tanh(x) ~ x P(u) / Q(u), u = x^2: x P(u) - tanh(x) Q(u) is linear in the coefficients; divided
    # by tanh(x) Q(u) with the previous round's Q it is the relative error (Sanathanan-Koerner)
    x = TANH_FIT * (cheb + 1) / 2
    t = np.tanh(x)
    U = np.vander(x * x, 5, increasing=True)
    A = np.hstack([x[:, None] * U, -t[:, None] * U[:, 1:]])
    q = np.ones_like(x)
    for _ in range(rounds):
        w = 1 / (t * q)
        c = np.linalg.lstsq(A * w[:, None], t * w, rcond=None)[0]
        q = U @ np.concatenate([[1.0], c[5:]])
    return exp_c, c[:5], c[5:]


_i32 = ir.IntType(32)
_f32 = ir.FloatType()
_OWN = ("contract",)   # flags of our own: fusing into an FMA is fine, reassociating is not
_MAGIC = 1.5 * 2 ** 23 + 127
_MAGIC_BITS = int(np.float32(_MAGIC).view(np.int32))
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375                   # few mantissa bits: k * _LN2_HI is exact
_LN2_LO = -2.12194440e-4


@intrinsic
def _reduce(typingctx, x):
    """(t, r): t = x log2(e) + M, whose low mantissa bits hold k + 127; r = x - k ln 2."""
    sig = types.UniTuple(types.float32, 2)(types.float32)

    def codegen(context, builder, signature, args):
        x, = args
        log2e, magic, ln2_hi, ln2_lo = (ir.Constant(_f32, v) for v in (_LOG2E, _MAGIC, _LN2_HI, _LN2_LO))
        t = builder.fadd(builder.fmul(x, log2e, flags=_OWN), magic, flags=_OWN)
        k = builder.fsub(t, magic, flags=_OWN)
        r = builder.fsub(x, builder.fmul(k, ln2_hi, flags=_OWN), flags=_OWN)
        r = builder.fsub(r, builder.fmul(k, ln2_lo, flags=_OWN), flags=_OWN)
        return context.make_tuple(builder, signature.return_type, (t, r))
    return sig, codegen


@intrinsic
def _pow2(typingctx, t):
    """2^k from t of `_reduce`, for k in [-126, 127]: its low bits moved to the exponent field."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.shl(builder.bitcast(args[0], _i32), ir.Constant(_i32, 23)), _f32)
    return sig, codegen


@intrinsic
def _scale_wide(typingctx, p, t):
    """p * 2^k from t of `_reduce`, for k in [-150, 150], as (p * 2^(k - k1)) * 2^k1 with k1 = floor(k / 2):
    one rounding, into a denormal or inf where the result is one."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        p, t = args
        d = builder.sub(builder.bitcast(t, _i32), ir.Constant(_i32, _MAGIC_BITS - 254))   # k + 254
        h = builder.lshr(d, ir.Constant(_i32, 1))                                            # k1 + 127

        def pow2(biased):
            return builder.bitcast(builder.shl(biased, ir.Constant(_i32, 23)), _f32)
        return builder.fmul(builder.fmul(p, pow2(builder.sub(d, h)), flags=_OWN), pow2(h), flags=_OWN)
    return sig, codegen


_F = np.float32
_FLAGS = {"nsz", "arcp", "contract", "afn"}   # when not inlined; inlined, the caller's flags apply
_C2, _C3, _C4, _C5 = (_F(c) for c in EXP_COEFFS)
_P0, _P1, _P2, _P3, _P4 = (_F(c) for c in TANH_P)
_Q1, _Q2, _Q3, _Q4 = (_F(c) for c in TANH_Q)


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def _exp_reduced(r):
    """e^r for r in [-ln2/2, ln2/2]."""
    return _F(1.0) + r * (_F(1.0) + r * (_C2 + r * (_C3 + r * (_C4 + r * _C5))))


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def _exp_bounded(x):
    """e^x for x in [-87, 88] (one factor 2^k)."""
    t, r = _reduce(x)
    return _exp_reduced(r) * _pow2(t)


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def exp32(v):
    # e^-104 rounds to 0 and e^100 overflows to inf in the last product
    x = min(max(v, _F(-104.0)), _F(100.0))
    t, r = _reduce(x)
    return _scale_wide(_exp_reduced(r), t)


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def tanh32(v):
    a = min(abs(v), _F(TANH_CLAMP))
    u = a * a
    y = (a * (_P0 + u * (_P1 + u * (_P2 + u * (_P3 + u * _P4))))
         / (_F(1.0) + u * (_Q1 + u * (_Q2 + u * (_Q3 + u * _Q4)))))
    return math.copysign(min(y, _F(1.0)), v)


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def sigmoid32(v):
    # past 20 the result rounds to 1; below -88 the exact one is denormal
    return _F(1.0) / (_F(1.0) + _exp_bounded(-min(max(v, _F(-88.0)), _F(20.0))))
