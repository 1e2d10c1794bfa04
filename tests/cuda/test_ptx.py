"""Every generated kernel compiles to PTX for compute capability 9.0 (no GPU needed).

The simulator runs kernels as Python and checks no types; this is the check that a typing
error (a float64 constant in a float32 kernel, an unsupported call) fails CI.
"""

from __future__ import annotations

import re

import pytest

import seqengine as se
from seqengine.backends.cuda.config import GEMM_REGS
from seqengine.backends.cuda.emit import signature_types

CC = (9, 0)
F64_ARITHMETIC = re.compile(r"\b(add|sub|mul|div|fma)(\.rn)?\.f64\b")


@pytest.fixture(autouse=True)
def compute_capability_without_a_gpu(monkeypatch):
    """numba-cuda compiles the implementation of `cuda.cg.this_grid()` (the persistent kernels' grid
    barrier) as a device function for the *current* GPU's compute capability, which a machine without a
    GPU cannot report. Answer the PTX target's instead, for the length of one test."""
    from types import SimpleNamespace

    import numba.cuda.dispatcher
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(se.cells()))
def test_every_kernel_compiles_to_ptx(name, dtype):
    from numba import cuda

    from seqengine.backends.cuda import generated_module
    from seqengine.backends.cuda.config import STEP_MAX_THREADS
    _, module = generated_module(se.get_cell(name), dtype)
    signatures = module.KERNELS["signatures"]
    assert signatures
    for kernel, signature in signatures.items():
        py_func = getattr(module, kernel).py_func
        bounded = kernel in module.KERNELS["step_kernels"]
        ptx, _ = cuda.compile_ptx(py_func, signature_types(signature, dtype), cc=CC,
                                  launch_bounds=STEP_MAX_THREADS if bounded else None)
        assert ".target sm_90" in ptx, kernel
        if bounded:   # the register budget of a full block: what the runtime's step kernels are built with
            assert f".maxntid {STEP_MAX_THREADS}" in ptx, kernel
            assert ".local" not in ptx, f"{kernel}: a thread-local array (the unrolled values stay registers)"
        if "persistent" in kernel:   # the steps meet at the grid barrier (a cooperative launch)
            assert "cudaCGSynchronize" in ptx, kernel
        if dtype == "float32":   # no float64 constant promoted a float32 kernel's arithmetic
            assert not F64_ARITHMETIC.search(ptx), f"{kernel}: float64 arithmetic in a float32 kernel"


# Negative-index wraparound: a signed index's sign (shr.s64) masks its axis length in, or a select does.
WRAPAROUND = re.compile(r"\b(shr\.s64|selp\.b64)\b")


def _basic_blocks(ptx: str) -> list[list[str]]:
    """The PTX instructions (opcode and operands) of each basic block, in order."""
    blocks, current = [], []
    for line in ptx.splitlines():
        line = line.strip()
        if re.match(r"^\$L\w+:$", line):
            blocks.append(current)
            current = []
        elif line.endswith(";") and not line.startswith(("//", ".", "{", "}")):
            current.append(line)
    return blocks + [current]


def _count(block: list[str], op: str) -> int:
    return sum(op in i for i in block)


def _hot_loop(ptx: str, step_kernel: bool = False) -> list[str]:
    """The GEMM's inner loop: the block with the most shared-memory loads. A step kernel's unrolled pass
    of its dot products: the block with both the most shared (operand) and global (weight) loads; the
    slices' partial sums read shared memory only, the pointwise work global memory only."""
    def key(block):
        return _count(block, "ld.shared") * (_count(block, "ld.global") if step_kernel else 1)
    return max(_basic_blocks(ptx), key=key)


@pytest.mark.parametrize("name", ["lstm", "gru_cho"])
def test_step_kernels_hot_loop_has_no_wraparound(name):
    """The dot products' unrolled pass indexes without negative-index wraparound (unsigned indices): the
    wraparound took a compare and a select per load and 64-bit arithmetic to undo it (lstm forward's
    pass: 364 instructions for 32 weight loads in SASS, 183 without)."""
    from numba import cuda

    from seqengine.backends.cuda import generated_module
    from seqengine.backends.cuda.config import STEP_MAX_THREADS
    _, module = generated_module(se.get_cell(name), "float32")
    signatures = module.KERNELS["signatures"]
    checked = []
    for kernel in module.KERNELS["step_kernels"]:
        if "persistent" in kernel or kernel == "backward_initial_kernel":
            continue   # the same bodies as the step kernels
        ptx, _ = cuda.compile_ptx(getattr(module, kernel).py_func, signature_types(signatures[kernel], "float32"), cc=CC,
                                  launch_bounds=STEP_MAX_THREADS)
        loop = _hot_loop(ptx, step_kernel=True)
        loads = _count(loop, "ld.global")
        if not loads:
            continue   # a segment with no products
        assert not [i for i in loop if WRAPAROUND.search(i)], kernel
        assert sum("fma.rn.f32" in i for i in loop) + sum("mul.f32" in i for i in loop) >= loads, kernel
        # a load, its FMA, its 64-bit address (PTX before ptxas folds it: 5.25 a load at most now; with
        # the wraparound, 8.75 in lstm's forward)
        assert len(loop) <= 6 * loads, f"{kernel}: {len(loop)} PTX instructions for {loads} weight loads"
        checked.append(kernel)
    # the loop was found where products are: segment 0's forward (training, inference) and backward at least
    assert {"forward_train_seg0_kernel", "forward_infer_seg0_kernel", "backward_seg0_kernel"} <= set(checked), checked


@pytest.mark.parametrize("regs", [GEMM_REGS, 8])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_kernels_compile_to_ptx(dtype, regs):
    """Every layout of the default GEMM (4 x 4 outputs a thread) and of 8 x 8: no float64 arithmetic in
    float32, no thread-local arrays, and the inner loop as written by hand: a thread's 4 adjacent shared
    words in one 128-bit load, a multiply-add for every pair of loaded values, no wraparound and little
    else."""
    from numba import cuda

    from seqengine.backends.cuda.gemm import GEMM_SIGNATURE, gemm_kernel_name, gemm_module
    module = gemm_module(dtype, regs=regs)
    vector = "ld.shared.v4.f32" if dtype == "float32" else "ld.shared.v2.f64"
    fma = f"fma.rn.{'f32' if dtype == 'float32' else 'f64'}"
    for trans_a in (False, True):
        for trans_b in (False, True):
            kernel = gemm_kernel_name(trans_a, trans_b)
            ptx, _ = cuda.compile_ptx(getattr(module, kernel).py_func, signature_types(GEMM_SIGNATURE, dtype), cc=CC)
            assert ".local" not in ptx, f"{kernel}: a thread-local array (accumulators must stay registers)"
            if dtype == "float32":
                assert not F64_ARITHMETIC.search(ptx), f"{kernel}: float64 arithmetic in a float32 kernel"
            loop = _hot_loop(ptx)
            fmas = sum(fma in i for i in loop)
            steps = fmas // regs ** 2          # steps of the sum an iteration (4 x 4: LLVM unrolls two)
            assert steps >= 1 and fmas == steps * regs ** 2, kernel
            loads = sum("ld.shared" in i for i in loop)   # 16 bytes each: 4 float32 or 2 float64 words
            assert loads == sum(vector in i for i in loop) == steps * 2 * regs // (4 if dtype == "float32" else 2), \
                f"{kernel}: {loads} shared loads, not all {vector}"
            assert not [i for i in loop if WRAPAROUND.search(i)], kernel
            # the rest: the step to the next stage row, its address, the loop test (16-20 PTX instructions,
            # 9 SASS instructions after ptxas); the GEMM of session 4 had 69 SASS instructions a step
            assert len(loop) <= fmas + loads + 24, f"{kernel}: {len(loop)} PTX instructions in the inner loop"
