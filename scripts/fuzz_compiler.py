"""The compiler's property-based tests (tests/test_fuzz_compiler.py), run longer than CI runs them.

    python scripts/fuzz_compiler.py                       # 20x CI's examples, a random seed
    python scripts/fuzz_compiler.py --scale 100 --seed 7  # reproduce a run
    python scripts/fuzz_compiler.py --only front-end      # text and mutations only (fast, no Numba)
    python scripts/fuzz_compiler.py --only cells          # random valid cells (each compiles kernels)

CI runs a fixed, derandomized set of examples. Here the example counts are multiplied by --scale
and hypothesis draws from --seed (printed, so a failure can be replayed); hypothesis shrinks a
failing example and prints it as a `Cell(...)` or declaration to paste into a test. Random valid
cells compile Numba kernels (seconds each); their kernels are cached in $SEQENGINE_CACHE_DIR, so
use a scratch folder for long runs (--cache-dir) to keep the default cache small. Exit status:
pytest's.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELECT = {"front-end": "not valid_cells", "cells": "valid_cells", "all": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=20, help="multiply CI's example counts (default 20)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    p.add_argument("--only", choices=sorted(SELECT), default="all")
    p.add_argument("--cache-dir", default=None, help="SEQENGINE_CACHE_DIR for the generated kernels "
                                                     "(default: a temporary folder)")
    args = p.parse_args(argv)
    if args.scale < 2:
        p.error("--scale must be at least 2 (1 is CI's derandomized run: python -m pytest tests/test_fuzz_compiler.py)")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="seqengine-fuzz-")
    env = dict(os.environ, SEQENGINE_FUZZ_SCALE=str(args.scale), SEQENGINE_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_fuzz_compiler.py"),
           f"--hypothesis-seed={seed}", "--hypothesis-show-statistics"]
    if SELECT[args.only]:
        cmd += ["-k", SELECT[args.only]]
    print(f"fuzzing the compiler: scale {args.scale}, seed {seed}, kernels in {cache}", flush=True)
    print(f"replay: python {Path(__file__).relative_to(ROOT)} --scale {args.scale} --seed {seed} --only {args.only}",
          flush=True)
    return subprocess.call(cmd, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
