#!/usr/bin/env bash
# The GPU measurements of one device session, in one command (a lent GPU machine has ~15 minutes):
#
#   bash benchmarks/gpu_session.sh [OUT]          # from the repository root; OUT default: $OUT or gpu-session
#
# 1. installs this checkout into the machine's Python (no network there: --no-index, --no-deps; numba,
#    numba-cuda and torch come with the device image);
# 2. works around the image's numba-cuda calling np.row_stack, which its NumPy 2.5 removed: an alias in a
#    sitecustomize.py in a temporary folder on PYTHONPATH, for this run only (RESULTS.md, GPU section);
# 3. times the GEMM kernels' block shapes GEMM_VARIANTS at the targets' products against torch.matmul
#    (benchmarks/gpu_gemm.py);
# 4. runs the benchmark grid with the GPU peers (`seqengine bench --gpu`) for CELLS at SHAPES: by
#    default the cases of the issue's GPU targets (custom cells >= 3x their torch loops, lstm within 2x
#    of cuDNN at 100x64x256). The CPU seqengine column there is only the reference the GPU results are
#    checked against, so it runs on one Numba thread (no CPU team kernels to compile);
# 5. takes a training step apart (benchmarks/gpu_breakdown.py) at BREAKDOWN_SHAPES for BREAKDOWN_CELLS,
#    for each step block shape in LAUNCHES (units x rows x splits, or auto: the default's choice per
#    shape), and with PROFILE=N profiles the host over N steps of each (cProfile).
# STAGES picks the stages and their order (default "gemm bench breakdown"); MODES the bench's modes.
# The targets' grid runs before the breakdown, and a failing stage does not stop the next: what a
# device session left in OUT comes back even when its time runs out (each stage writes as it goes).
set -uo pipefail
OUT=${1:-${OUT:-gpu-session}}
BREAKDOWN_CELLS=${BREAKDOWN_CELLS:-lstm,gru_cho,rnn}
BREAKDOWN_SHAPES=${BREAKDOWN_SHAPES:-"200x8x64 100x64x256 50x16x512"}
CELLS=${CELLS:-lstm,peephole,coupled,gru,gru_cho,rnn}
SHAPES=${SHAPES:-100x64x256,50x16x512}
REPEATS=${REPEATS:-3}
GEMM_VARIANTS=${GEMM_VARIANTS:-16x8,16x4,8x8}
GEMM_SHAPES=${GEMM_SHAPES:-100x64x256,50x16x512}
GEMM_SQUARE=${GEMM_SQUARE:-4096}
LAUNCHES=${LAUNCHES:-auto,32x4x4,32x2x8,16x4x8}
PROFILE=${PROFILE:-0}
MODES=${MODES:-train}
STAGES=${STAGES:-"gemm bench breakdown"}

shim=$(mktemp -d)
cat > "$shim/sitecustomize.py" <<'PY'
import numpy
if not hasattr(numpy, "row_stack"):      # numba-cuda 0.30 calls it; NumPy 2.5 removed it
    numpy.row_stack = numpy.vstack
PY
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
export SEQENGINE_CACHE_DIR=${SEQENGINE_CACHE_DIR:-/tmp/seqengine-gpu-cache}
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt" || true

stage() {   # stage NAME COMMAND...: run it, its output also in OUT/NAME.txt; say if it failed, go on
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    { "$@" 2>&1 || echo "== $name FAILED (exit $?)"; } | tee "$OUT/$name.txt"
    echo "== $name: $((SECONDS - start)) s"
}
for name in $STAGES; do
    case $name in
    gemm) stage gemm python3 benchmarks/gpu_gemm.py --variants "$GEMM_VARIANTS" --shapes "$GEMM_SHAPES" \
              --square "$GEMM_SQUARE" --repeats "$REPEATS" ;;
    bench) stage bench env NUMBA_NUM_THREADS=1 python3 -m seqengine.cli bench --gpu --impls seqengine \
               --cells "$CELLS" --shapes "$SHAPES" --modes "$MODES" --repeats "$REPEATS" --warmup 1 --no-compile \
               --no-memory --no-plot --out "$OUT/bench" ;;
    # shellcheck disable=SC2086  # the shapes are separate arguments
    breakdown) stage breakdown python3 benchmarks/gpu_breakdown.py "$BREAKDOWN_CELLS" $BREAKDOWN_SHAPES \
                   --repeats "$REPEATS" --launches "$LAUNCHES" --profile "$PROFILE" ;;
    *) echo "gpu_session.sh: unknown stage '$name' in STAGES (expected gemm, bench, breakdown)"; exit 2 ;;
    esac
done
