"""``seqengine bench``: seqengine against torch and NumPy, checked, then timed.

    seqengine bench                          # the default grid (several minutes)
    seqengine bench --quick --out /tmp/b     # smoke run: tiny shapes, lstm and gru, seconds
    seqengine bench --cells lstm,gru --shapes 100x32x128,1000x1x256:forward --modes train --repeats 11

Writes DIR/results.json, DIR/results.md and, with matplotlib (``pip install seqengine[bench]``),
DIR/results.png. See `runner` for the method and `peers` for the implementations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    from .runner import DEFAULT_CELLS, DEFAULT_IMPLS, DEFAULT_MODES
    p = argparse.ArgumentParser(prog="seqengine bench", description="Benchmark seqengine's CPU kernels against "
                                "torch.nn.LSTM/GRU, hand-written torch cells and NumPy (float32, all cores). "
                                "Every peer is checked against seqengine before it is timed.")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, lstm and gru, few repeats")
    p.add_argument("--cells", type=_csv, help=f"comma-separated cells (default {','.join(DEFAULT_CELLS)})")
    p.add_argument("--shapes", type=_csv, help="comma-separated TxBxH[xD][:forward|:train] "
                   "(default 100x32x128,100x64x256,50x16x512,200x8x64,1000x1x256:forward)")
    p.add_argument("--modes", type=_csv, help=f"forward (inference) and/or train (forward+backward); "
                   f"default {','.join(DEFAULT_MODES)}")
    p.add_argument("--impls", type=_csv, help=f"default {','.join(DEFAULT_IMPLS)}; seqengine is always run "
                   "(it is the reference)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 7; quick 3)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 2; quick 1)")
    p.add_argument("--threads", type=int, help="threads for every pool (default: all cores available)")
    p.add_argument("--no-compile", action="store_true", help="skip the fresh-process compile-time probes")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    p.add_argument("--no-plot", action="store_true", help="do not write results.png")
    p.add_argument("--gpu", action="store_true", help="also time seqengine's CUDA backend (seqengine.backends.cuda)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default ./bench-results)")
    return p


def _options(a, argv):
    from . import runner
    from .peers import IMPLS
    from ..plugins import cells
    opts = runner.Options()
    opts.argv = list(argv)
    if a.quick:
        opts.quick = True
        opts.cells, opts.shapes = ("lstm", "gru"), runner.QUICK_SHAPES
        opts.repeats, opts.warmup, opts.gemm_n = 3, 1, 512
        opts.compile_cells, opts.compile_shape = ("rnn",), runner.QUICK_SHAPES[0]   # the cheapest to compile
        opts.memory_shape = runner.Shape(50, 8, 64, 64)
    if a.cells:
        known = cells()
        bad = [c for c in a.cells if c not in known]
        if bad:
            raise ValueError(f"unknown cell(s) {bad}; registered: {', '.join(sorted(known))}")
        opts.cells = a.cells
        if not a.quick:
            opts.compile_cells = tuple(c for c in opts.compile_cells if c in a.cells)
        if opts.memory_cell not in a.cells and not a.quick:
            opts.memory_cell = a.cells[0]
    if a.shapes:
        opts.shapes = tuple(runner.parse_shape(s) for s in a.shapes)
    if a.modes:
        bad = [m for m in a.modes if m not in runner.DEFAULT_MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}; use forward, train")
        opts.modes = a.modes
    if a.impls:
        bad = [i for i in a.impls if i not in IMPLS]
        if bad:
            raise ValueError(f"unknown implementation(s) {bad}; choose from {', '.join(IMPLS)}")
        opts.impls = ("seqengine",) + tuple(i for i in a.impls if i != "seqengine")
    if a.repeats is not None:
        if a.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        opts.repeats = a.repeats
    if a.warmup is not None:
        opts.warmup = max(0, a.warmup)
    if a.threads is not None:
        opts.threads = a.threads
    if a.no_compile:
        opts.compile_cells = ()
    if a.no_memory:
        opts.memory_shape = None
    return opts


def main(argv=None) -> int:
    """Entry point of ``seqengine bench``; returns the exit status (1 when a peer failed its check)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    from . import report, runner
    try:
        opts = _options(a, argv)
    except ValueError as e:
        print(f"seqengine bench: error: {e}", file=sys.stderr)
        return 2
    if a.gpu:
        try:
            from seqengine.backends.cuda import require_cuda
            require_cuda()
        except Exception as e:   # ImportError, or CudaUnavailableError naming what is missing
            print("seqengine bench --gpu: the CUDA backend cannot run here "
                  f"({type(e).__name__}: {e}). It needs numba-cuda (pip install 'seqengine[cuda]') and an "
                  "NVIDIA GPU with its driver; run without --gpu for the CPU benchmarks.", file=sys.stderr)
            return 2
        opts.impls = opts.impls + ("seqengine-cuda",)
        import torch
        if torch.cuda.is_available():   # the GPU peers: cuDNN layers and the hand-written loops on the GPU
            opts.impls = opts.impls + ("torch-native-cuda", "torch-loop-cuda")
        else:
            print("seqengine bench --gpu: this torch has no CUDA; timing seqengine-cuda without the torch GPU "
                  "peers (install a CUDA build of torch for them)", file=sys.stderr)

    result = runner.run(opts)
    paths = report.write(result, a.out, want_plot=not a.no_plot)
    if "png" not in paths and not a.no_plot:
        print("(no plot: matplotlib is not installed; pip install 'seqengine[bench]')", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    failed = [(c["cell"], c["mode"], n) for c in result["cases"] for n, e in c["impls"].items()
              if e.get("status") in ("failed-check", "error")]
    for cell, mode, n in failed:
        print(f"CHECK FAILED: {n} disagrees with seqengine on {cell} ({mode})", file=sys.stderr)
    return 1 if failed else 0


__all__ = ["main"]
