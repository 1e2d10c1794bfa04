"""Named launch defaults of the CUDA backend (tunables are passed to kernels, never frozen globals).

The block shapes are runtime launch parameters: every kernel sizes its shared
memory dynamically from ``blockDim``, so tests can launch tiny blocks (forcing
many blocks on tiny shapes) with the very kernels a GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass


# Threads a block of a step kernel may have: the kernels are compiled with this launch bound, so that
# a block of that size always has the registers it needs (a 1024-thread block would cap a thread at 64).
STEP_MAX_THREADS = 512


@dataclass(frozen=True)
class LaunchConfig:
    """Threads per block of the generated kernels.

    units: threads along the hidden units of a step kernel (blockDim.x; also the operand
           tile width staged in shared memory for the in-step products).
    rows:  threads along the batch rows of a step kernel (blockDim.y).
    splits: threads along the sum of a step's products (blockDim.z): slice z adds the operand tiles
            z, z + splits, ...; the partial sums meet in shared memory. More loads in flight per SM.
    persistent: run all steps of a forward or backward in one cooperative launch (blocks meet at a
                grid barrier after each segment) instead of one launch per step and segment.
    gemm_tile: threads along each side of a block of the hoisted and deferred GEMM kernels, and the
               depth of a stage of their sums.
    gemm_regs: outputs each GEMM thread computes along each side (a gemm_regs x gemm_regs register
               tile; a block computes a [gemm_tile * gemm_regs]^2 tile of the result). The GEMM's block
               shape is compiled into its kernel (`gemm.py`): one kernel per (gemm_tile, gemm_regs).
    """

    units: int = 32
    rows: int = 4
    splits: int = 4
    gemm_tile: int = 16
    gemm_regs: int = 8
    persistent: bool = True

    def __post_init__(self):
        for name in ("units", "rows", "splits", "gemm_tile", "gemm_regs"):
            if getattr(self, name) < 1:
                raise ValueError(f"LaunchConfig.{name} must be >= 1")
        if self.units * self.rows * self.splits > STEP_MAX_THREADS:
            raise ValueError(f"LaunchConfig: units * rows * splits = {self.units * self.rows * self.splits}; a step "
                             f"kernel's block has at most {STEP_MAX_THREADS} threads (its launch bound)")
        if self.gemm_tile ** 2 > 1024:
            raise ValueError(f"LaunchConfig: gemm_tile ** 2 = {self.gemm_tile ** 2}; "
                             "a CUDA block has at most 1024 threads")
        if self.gemm_regs > 8:
            raise ValueError(f"LaunchConfig.gemm_regs = {self.gemm_regs}; at most 8 (8 x 8 = 64 accumulators "
                             "a thread already fill half of its registers)")


DEFAULT_LAUNCH = LaunchConfig()
