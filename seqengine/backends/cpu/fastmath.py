"""float32 exp, tanh and sigmoid that LLVM can vectorize.

Numba lowers ``math.exp``/``math.tanh`` to libm calls, which keep a gate loop
scalar (no SVML in llvmlite here), and that scalar loop cost as much as the
GEMMs. These versions are plain arithmetic plus one bit-level intrinsic, so
the fused loops compile to packed AVX-512/AVX2 code.

    exp(x)  = 2^k * e^r,   k = round(x / ln 2),  r = x - k ln 2 in [-ln2/2, ln2/2]
              e^r = 1 + r + r^2 (c0 + c1 r + ... + c4 r^4)
    tanh(x) = x + x^3 (t0 + t1 x^2 + ... + t4 x^8)       for |x| < 0.625
            = sign(x) (1 - 2 / (exp(2|x|) + 1))          otherwise
    sigmoid(x) = 1 / (1 + exp(-x))

The coefficients are least-squares fits on Chebyshev nodes
(`derive_coefficients`, checked by the tests); the float32 results stay within
1e-6 relative of the exact functions over the normal float32 range, and NaN/Inf
propagate (the clamps are written so that a NaN fails every comparison).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

EXP_COEFFS = (0.49999989, 0.16666518, 0.04166953, 0.00836892, 0.00137514)
TANH_COEFFS = (-0.33333285, 0.13331513, -0.05374466, 0.02065312, -0.00571896)
TANH_SMALL = 0.625


def derive_coefficients(degree: int = 4, nodes: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares fits minimising the relative error of e^r and tanh(x)."""
    cheb = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    r = 0.5 * np.log(2.0) * cheb
    w = r ** 2 / np.exp(r)
    V = np.vander(r, degree + 1, increasing=True)
    exp_c = np.linalg.lstsq(V * w[:, None], (np.exp(r) - 1 - r) / r ** 2 * w, rcond=None)[0]
    x = TANH_SMALL * (cheb + 1) / 2 + 1e-9
    w = x ** 3 / np.tanh(x)
    V = np.vander(x * x, degree + 1, increasing=True)
    tanh_c = np.linalg.lstsq(V * w[:, None], (np.tanh(x) - x) / x ** 3 * w, rcond=None)[0]
    return exp_c, tanh_c


@intrinsic
def pow2_int(typingctx, k):
    """2.0 ** k as float32 for an integral float32 k in [-126, 127]: the exponent bits, no libm call."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        ki = builder.fptosi(args[0], i32)
        bits = builder.shl(builder.add(ki, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return sig, codegen


_F = np.float32
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)          # few mantissa bits: k * _LN2_HI is exact
_LN2_LO = _F(-2.12194440e-4)
_C0, _C1, _C2, _C3, _C4 = (_F(c) for c in EXP_COEFFS)
_T0, _T1, _T2, _T3, _T4 = (_F(c) for c in TANH_COEFFS)
_EXP_HI = _F(88.72283)             # above: +inf
_EXP_LO = _F(-103.97208)           # below: 0 (the two-factor scale reaches denormals)
_FLAGS = {"nsz", "arcp", "contract", "afn"}   # no "reassoc": (p * 2^k1) * 2^k2 must not overflow first


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def exp32(v):
    x = _EXP_LO if v < _EXP_LO else v
    x = _EXP_HI if x > _EXP_HI else x
    k = np.floor(x * _LOG2E + _F(0.5))
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _F(1.0) + r + r * r * (_C0 + r * (_C1 + r * (_C2 + r * (_C3 + r * _C4))))
    k1 = np.floor(k * _F(0.5))      # 2^k as two factors so k = 128 and k < -126 stay representable
    y = p * pow2_int(k1) * pow2_int(k - k1)
    return _F(math.inf) if v > _EXP_HI else y


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def tanh32(v):
    a = abs(v)
    u = v * v
    small = v + v * u * (_T0 + u * (_T1 + u * (_T2 + u * (_T3 + u * _T4))))
    large = _F(1.0) - _F(2.0) / (exp32(_F(2.0) * a) + _F(1.0))
    large = large if v >= _F(0.0) else -large
    return small if a < _F(TANH_SMALL) else large


@njit(cache=True, fastmath=_FLAGS, inline="always", error_model="numpy")
def sigmoid32(v):
    return _F(1.0) / (_F(1.0) + exp32(-v))
