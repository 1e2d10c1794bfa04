"""The ``seqengine`` command line: cells, check, kernel, demo (and bench)."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _cmd_cells(args) -> int:
    from . import functional
    from .plugins import cells, registry
    known = cells()
    names = args.names or sorted(known)
    for name in names:
        cell = known.get(name)
        if cell is None:
            print(f"no cell named {name!r}; registered: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        print(f"{name}  (plugin {registry().owner[name]}; state {list(cell.state)}, output {cell.output_name})")
        if cell.doc:
            print(f"  {cell.doc}")
        for line in cell.equations.splitlines():
            print(f"    {line}")
        shapes = functional.param_shapes(cell, args.input_size, args.hidden_size)
        print(f"  parameters (D={args.input_size}, H={args.hidden_size}): "
              + ", ".join(f"{p} {list(s)}" for p, s in shapes.items()))
        print()
    for plugin, err in registry().failed.items():
        print(f"plugin {plugin!r} failed to load: {err}", file=sys.stderr)
    return 0


def _cmd_check(args) -> int:
    from .gradcheck import check_gradients
    result = check_gradients(args.cell, input_size=args.input_size, hidden_size=args.hidden_size,
                             steps=args.steps, batch=args.batch, seed=args.seed, tolerance=args.tolerance)
    print(result.report())
    return 0 if result.ok else 1


def _cmd_kernel(args) -> int:
    from .backends.cpu import kernel_source
    from .plugins import get_cell
    print(kernel_source(get_cell(args.cell), args.dtype))
    return 0


def _cmd_demo(args) -> int:
    """Forward and backward of a cell on random data, then its gradient check."""
    import time

    from . import RNN
    from .gradcheck import check_gradients
    rng = np.random.default_rng(args.seed)
    rnn = RNN(args.cell, args.input_size, args.hidden_size, seed=args.seed)
    x = rng.standard_normal((args.steps, args.batch, args.input_size)).astype(np.float32)
    t0 = time.perf_counter()
    y, state = rnn.forward(x)
    dx, dstate0 = rnn.backward(np.ones_like(y))
    t1 = time.perf_counter()
    y, state = rnn.forward(x)
    dx, dstate0 = rnn.backward(np.ones_like(y))
    t2 = time.perf_counter()
    print(f"{rnn}: x {list(x.shape)} -> y {list(y.shape)}, states "
          + ", ".join(f"{s} {list(v.shape)}" for s, v in state.items()))
    print(f"first forward+backward (compile or load from cache) {t1 - t0:.2f} s, second {1e3 * (t2 - t1):.1f} ms")
    print(f"sum(y) = {float(y.sum()):.6f}; |dx| = {float(np.linalg.norm(dx)):.6f}; "
          + "; ".join(f"|d{p}| = {float(np.linalg.norm(g)):.4f}" for p, g in list(rnn.grads.items())[:3]) + " ...")
    result = check_gradients(args.cell)
    print(result.report())
    return 0 if result.ok else 1


def _cmd_bench(args, rest) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as e:
        print(f"the benchmark runner is not available: {e}", file=sys.stderr)
        return 2
    return bench_main(rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqengine", description="Recurrent cells declared as equations, "
                                "compiled to fused Numba kernels.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cells", help="list registered cells with equations and parameter shapes")
    c.add_argument("names", nargs="*", help="only these cells")
    c.add_argument("--input-size", type=int, default=32, help="D used to show shapes")
    c.add_argument("--hidden-size", type=int, default=64, help="H used to show shapes")
    c.set_defaults(func=_cmd_cells)

    k = sub.add_parser("check", help="finite-difference gradient check (float64) of a cell")
    k.add_argument("cell")
    k.add_argument("--input-size", type=int, default=3)
    k.add_argument("--hidden-size", type=int, default=4)
    k.add_argument("--steps", type=int, default=4)
    k.add_argument("--batch", type=int, default=3)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--tolerance", type=float, default=1e-6)
    k.set_defaults(func=_cmd_check)

    g = sub.add_parser("kernel", help="print the generated Numba source of a cell")
    g.add_argument("cell")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    g.set_defaults(func=_cmd_kernel)

    d = sub.add_parser("demo", help="forward/backward of a cell on random data, then its gradient check")
    d.add_argument("--cell", default="lstm")
    d.add_argument("--input-size", type=int, default=32)
    d.add_argument("--hidden-size", type=int, default=64)
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="benchmark runner (see `seqengine bench --help`)", add_help=False)
    b.set_defaults(func=None)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _cmd_bench(None, argv[1:])
    args = build_parser().parse_args(argv)
    from .cell import SpecError
    from .plugins import UnknownCellError
    try:
        return args.func(args)
    except (SpecError, UnknownCellError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
