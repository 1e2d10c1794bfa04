"""The ``seqengine`` command line: cells, check, kernel, demo, train, sample (and bench)."""

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


# -- train / sample -------------------------------------------------------------------------
# options that a resumed run may change; every other option must match the checkpoint
_RESUME_MAY_CHANGE = {"steps", "eval_every", "eval_batches", "checkpoint_every"}


def _train_config_fields(args) -> dict:
    from .train import TrainConfig
    names = {f for f in TrainConfig.__dataclass_fields__}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _cmd_train(args) -> int:
    import os
    import signal

    from .checkpoint import CheckpointError
    from .train import CorpusError, TrainConfig, Trainer, TrainingError
    from .train.distributed import DistributedError
    given = _train_config_fields(args)
    try:
        if args.resume:
            from .train import read_checkpoint
            head, _ = read_checkpoint(args.resume)
            saved = head["config"]
            if given.get("corpus") is not None:
                given["corpus"] = os.path.abspath(given["corpus"])
            clash = [f"--{k.replace('_', '-')} {v!r} (checkpoint: {saved.get(k)!r})" for k, v in given.items()
                     if k not in _RESUME_MAY_CHANGE and saved.get(k) != v]
            if clash:
                raise CheckpointError(
                    f"{args.resume}: checkpoint of task {saved['task']!r} with cell {saved['cell']!r} does not "
                    f"match {', '.join(clash)}; --resume continues the checkpoint's own run (leave these "
                    f"options out, or start a new run without --resume)")
            trainer = Trainer.resume(args.resume, out_dir=args.out,
                                     **{k: v for k, v in given.items() if k in _RESUME_MAY_CHANGE})
            print(f"resumed {args.resume} at step {trainer.step} of {trainer.config.steps}")
        else:
            out = args.out or os.path.join("runs", f"{given.get('task', 'chars')}-{given.get('cell', 'lstm')}")
            trainer = Trainer(TrainConfig(**given), out_dir=out)
    except (CorpusError, CheckpointError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = trainer.config
    what = {"chars": lambda: f" ({cfg.corpus or 'tiny Shakespeare'}, {len(trainer.task.vocab)} characters)",
            "adding": lambda: f" (T = {trainer.task.seq_len})",
            "copy": lambda: f" (delay {trainer.task.delay}, T = {trainer.task.seq_len})"}[cfg.task]()
    print(f"task {cfg.task}{what}; model {trainer.model.rnn!r} + head, {trainer.model.num_params():,} parameters; "
          f"{cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), batch {cfg.batch}, {cfg.steps} steps, seed {cfg.seed}; "
          f"output {trainer.out_dir}")
    if trainer.task.baseline is not None:
        print(f"trivial baseline loss: {trainer.task.baseline:.4f}")

    def stop(signum, frame):   # first Ctrl-C: finish the step, save a checkpoint; a second one aborts
        trainer.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:          # not the main thread
        previous = None
    try:
        rec = trainer.fit(progress=not args.no_progress, stop_after=args.stop_after, time_limit=args.time_limit)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    done = "stopped (Ctrl-C)" if trainer.stop_requested else ("finished" if trainer.step >= cfg.steps else "paused")
    print(f"{done} at step {trainer.step}/{cfg.steps} after {trainer.elapsed:.1f} s; validation loss "
          f"{rec['val_loss']:.4f}; checkpoint {trainer.last_checkpoint[0]}")
    if trainer.step < cfg.steps:
        print(f"continue with: seqengine train --resume {trainer.last_checkpoint[0]}")
    if cfg.task == "chars" and args.sample_length:
        print("sample:")
        print(trainer.sample(args.prime, args.sample_length, args.temperature, seed=cfg.seed))
    return 0


def _cmd_train_ranks(args) -> int:
    """`seqengine train`, once per MPI rank under mpiexec: a failing rank aborts the job (docs/MPI.md)."""
    from .train.distributed import current_world, guarded
    if args.distributed:
        from .train.distributed import DistributedError
        try:
            current_world(require=True)
        except DistributedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return guarded(_cmd_train, args)


def _cmd_sample(args) -> int:
    from .backends.cpu.threads import single_threaded_blas
    from .checkpoint import CheckpointError
    from .train import model_from_checkpoint, sample, vocabulary_of
    try:
        model, head = model_from_checkpoint(args.checkpoint)
        if head["config"]["task"] != "chars":
            raise CheckpointError(f"{args.checkpoint}: a model of task {head['config']['task']!r}; sampling "
                                  f"text needs a character model (seqengine train --task chars)")
        with single_threaded_blas():
            text = sample(model, vocabulary_of(head), args.prime, args.length, args.temperature, args.seed)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


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

    t = sub.add_parser("train", help="train a model on a built-in task (adding, copy, chars)",
                       description="Train a sequence model: input (embedding or features) -> recurrent stack -> "
                       "linear head. Options left out take the task's default (seqengine.train.TASK_DEFAULTS). "
                       "Writes OUT/checkpoint.npz and OUT/log.jsonl (one line per evaluation).")
    t.add_argument("--task", choices=["chars", "adding", "copy"], default=None,
                   help="chars: character language model on --corpus; adding: the adding problem (T = --seq-len); "
                   "copy: copy memory with --delay (default chars)")
    t.add_argument("--cell", default=None, help="a registered cell (seqengine cells); default lstm")
    t.add_argument("--layers", type=int, default=None, help="recurrent layers (default 1)")
    t.add_argument("--hidden", type=int, default=None, help="hidden size")
    t.add_argument("--embed", type=int, default=None, help="embedding size (token tasks)")
    t.add_argument("--seq-len", type=int, default=None, help="chars: training window; adding: T")
    t.add_argument("--delay", type=int, default=None, help="copy: delay between the symbols and their recall")
    t.add_argument("--corpus", default=None, help="chars: a UTF-8 text file (default: the shipped tiny Shakespeare)")
    t.add_argument("--batch", type=int, default=None, help="sequences per step")
    t.add_argument("--steps", type=int, default=None, help="total optimizer steps (the schedule's length)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="default adam")
    t.add_argument("--momentum", type=float, default=None, help="sgd momentum (default 0.9)")
    t.add_argument("--clip", type=float, default=None, help="clip the global gradient norm to this (0: off)")
    t.add_argument("--schedule", choices=["constant", "cosine", "linear"], default=None,
                   help="learning-rate decay to lr * --min-lr-ratio at the last step")
    t.add_argument("--warmup", type=int, default=None, help="linear warm-up steps")
    t.add_argument("--min-lr-ratio", type=float, default=None, help="final lr / peak lr (default 0.1)")
    t.add_argument("--dropout", type=float, default=None, help="dropout between layers (default 0)")
    t.add_argument("--seed", type=int, default=None, help="seed of parameters, data and dropout (default: drawn "
                   "and stored in the checkpoint)")
    t.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (0: at the end only)")
    t.add_argument("--eval-batches", type=int, default=None, help="evaluation batches (default: all)")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="write OUT/checkpoint.npz every N steps (default 0: at the end and when stopped)")
    t.add_argument("--out", default=None, help="output folder (default runs/TASK-CELL; with --resume the "
                   "checkpoint's folder)")
    t.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help="continue a run exactly where its checkpoint left it (optimizer, step, data, random state)")
    t.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after N steps of this run")
    t.add_argument("--time-limit", type=float, default=None,
                   help="stop (with a checkpoint) when the run's training time reaches this many seconds")
    t.add_argument("--no-progress", action="store_true", help="print evaluation lines instead of a progress bar")
    t.add_argument("--prime", default="\n", help="chars: text that starts the sample printed at the end (default a newline)")
    t.add_argument("--sample-length", type=int, default=300, help="chars: characters sampled at the end (default 300; 0: none)")
    t.add_argument("--temperature", type=float, default=0.8, help="chars: sampling temperature (default 0.8)")
    t.add_argument("--distributed", action="store_true", help="data-parallel over MPI ranks (mpiexec -n N seqengine "
                   "train ...); found from mpiexec's environment without this flag (docs/MPI.md)")
    t.set_defaults(func=_cmd_train_ranks)

    s = sub.add_parser("sample", help="generate text from a character model's checkpoint")
    s.add_argument("checkpoint", help="a checkpoint written by seqengine train --task chars")
    s.add_argument("--prime", default="\n", help="text that starts the model's state (characters of its "
                   "vocabulary; default a newline)")
    s.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    s.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature (> 0; lower: more conservative; default 0.8)")
    s.add_argument("--seed", type=int, default=None, help="seed of the sampling (default: a fresh one)")
    s.set_defaults(func=_cmd_sample)

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
