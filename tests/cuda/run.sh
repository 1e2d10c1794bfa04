#!/usr/bin/env bash
# The CUDA checks, each in its own process (NUMBA_ENABLE_CUDASIM must be set before numba is imported):
#   1. every cell's kernels under the CUDA simulator against the CPU backend (no GPU needed);
#   2. every generated kernel compiled to PTX for compute capability 9.0 (needs numba-cuda[cu12], no GPU),
#      the device buffer pool and the dispatcher-free launches on fake addresses.
# On a machine with a GPU, step 1 without NUMBA_ENABLE_CUDASIM runs the same tests on the device.
set -euo pipefail
cd "$(dirname "$0")/../.."
NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda/test_simulator.py -q -p no:cacheprovider "$@"
SEQENGINE_CUDA_PTX=1 python -m pytest tests/cuda/test_ptx.py tests/cuda/test_pool.py tests/cuda/test_launch.py -q -p no:cacheprovider "$@"
