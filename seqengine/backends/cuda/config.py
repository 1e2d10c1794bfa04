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


# Default GEMM block shape: 16 x 16 threads, 4 x 4 outputs each (64 x 64 tiles of c). 8 x 8 outputs
# (128 x 128 tiles) was the default until an H200 timed both: 4 x 4 is faster at every product of the
# targets' shapes (more blocks), equal at 4096^3 (RESULTS.md, session 8).
GEMM_THREADS = 16
GEMM_REGS = 4


@dataclass(frozen=True)
class LaunchConfig:
    """Threads per block of the generated kernels.

    units: threads along the hidden units of a step kernel (blockDim.x; also the operand
           tile width staged in shared memory for the in-step products).
    rows:  threads along the batch rows of a step kernel (blockDim.y).
    splits: threads along the sum of a step's products (blockDim.z): slice z adds the operand tiles
            z, z + splits, ...; the partial sums meet in shared memory. More loads in flight per SM.
           rows and splits left None are chosen per call from (B, H) by `step_block` (a block of
           STEP_MAX_THREADS threads); one given alone fixes the other to fill such a block.
    persistent: run all steps of a forward or backward in one cooperative launch (blocks meet at a
                grid barrier after each segment) instead of one launch per step and segment.
    gemm_tile: threads along each side of a block of the hoisted and deferred GEMM kernels, and the
               depth of a stage of their sums.
    gemm_regs: outputs each GEMM thread computes along each side (a gemm_regs x gemm_regs register
               tile; a block computes a [gemm_tile * gemm_regs]^2 tile of the result). The GEMM's block
               shape is compiled into its kernel (`gemm.py`): one kernel per (gemm_tile, gemm_regs).
    """

    units: int = 32
    rows: int | None = None
    splits: int | None = None
    gemm_tile: int = GEMM_THREADS
    gemm_regs: int = GEMM_REGS
    persistent: bool = True

    def __post_init__(self):
        for name in ("units", "rows", "splits", "gemm_tile", "gemm_regs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LaunchConfig.{name} must be >= 1")
        rows, splits = self.rows or 1, self.splits or 1
        if self.units * rows * splits > STEP_MAX_THREADS:
            raise ValueError(f"LaunchConfig: units * rows * splits = {self.units * rows * splits}; a step "
                             f"kernel's block has at most {STEP_MAX_THREADS} threads (its launch bound)")
        if self.gemm_tile ** 2 > 1024:
            raise ValueError(f"LaunchConfig: gemm_tile ** 2 = {self.gemm_tile ** 2}; "
                             "a CUDA block has at most 1024 threads")
        if self.gemm_regs > 8:
            raise ValueError(f"LaunchConfig.gemm_regs = {self.gemm_regs}; at most 8 (8 x 8 = 64 accumulators "
                             "a thread already fill half of its registers)")

    def step_block(self, B: int, H: int, multiprocessors: int) -> tuple[int, int, int]:
        """(units, rows, splits) of the step kernels for a batch of B rows and H units.

        Rows and splits not fixed by the config: rows from `AUTO_ROWS`, splits filling a block of
        STEP_MAX_THREADS, choosing the candidate whose (units, rows) tile count is the largest that
        does not exceed the multiprocessors (a block of 512 threads at ~128 registers fills an SM, and
        a persistent kernel's blocks walk the tiles: more tiles than SMs means a second wave a step;
        fewer leave SMs idle). Ties and all-too-many go to more rows (fewer splits: less partial-sum
        traffic). Measured on an H200 (RESULTS.md, session 8): 100x64x256 -> 32x4x4 (128 tiles),
        50x16x512 and 200x8x64 -> 32x2x8.
        """
        u = self.units
        if self.rows is not None and self.splits is not None:
            return u, self.rows, self.splits
        if self.rows is not None:
            return u, self.rows, max(1, STEP_MAX_THREADS // (u * self.rows))
        if self.splits is not None:
            return u, max(1, STEP_MAX_THREADS // (u * self.splits)), self.splits
        candidates = [r for r in AUTO_ROWS if u * r <= STEP_MAX_THREADS] or [1]
        tiles = {r: -(-H // u) * -(-B // r) for r in candidates}
        fitting = [r for r in candidates if tiles[r] <= multiprocessors]
        rows = max(fitting, key=lambda r: (tiles[r], r)) if fitting else max(candidates)
        return u, rows, max(1, STEP_MAX_THREADS // (u * rows))


# Rows a step block may have when the config leaves them open (see LaunchConfig.step_block).
AUTO_ROWS = (4, 2)

DEFAULT_LAUNCH = LaunchConfig()
