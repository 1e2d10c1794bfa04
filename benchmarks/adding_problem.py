"""The seed note's claim, measured: on the adding problem (T = 100) gated cells learn, a plain RNN does not.

    python benchmarks/adding_problem.py                                  # all six cells x 3 seeds
    python benchmarks/adding_problem.py --cells lstm,rnn --seeds 0 --steps 500 --out /tmp/adding

Each (cell, seed) trains in its own process (`seqengine.train.Trainer`, task "adding") with one Numba and
one BLAS thread, `--jobs` processes at a time (2 on a 2-core machine: no thread pool shares a core).
Test MSE on 1000 fixed sequences is recorded every `--eval-every` steps. Predicting 1 always scores
1/6 = 0.167; a cell counts as having learned the task when its final test MSE is <= --solved (0.01).
Writes OUT/results.json, OUT/results.md and, when matplotlib is installed, OUT/curves.png; exits 1 when
the claim does not hold (a gated cell unsolved or the rnn solved) on the median over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

GATED = ["lstm", "peephole", "coupled", "gru", "gru_cho"]
BASELINE = 1.0 / 6.0


def run_one(cell: str, seed: int, args) -> dict:
    from seqengine.train import TrainConfig, Trainer
    cfg = TrainConfig(task="adding", cell=cell, seq_len=args.T, hidden=args.hidden, batch=args.batch,
                      steps=args.steps, lr=args.lr, clip=1.0, schedule="cosine", warmup=0,
                      eval_every=args.eval_every, seed=seed)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.fit(progress=False, log=None)
    return {"cell": cell, "seed": seed, "seconds": time.perf_counter() - t0,
            "curve": [(r["step"], r["val_loss"]) for r in trainer.history], "final": trainer.history[-1]["val_loss"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default=",".join(GATED + ["rnn"]))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--solved", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="adding-results")
    p.add_argument("--one", nargs=2, metavar=("CELL", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return 0

    cells, seeds = args.cells.split(","), [int(s) for s in args.seeds.split(",")]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    forwarded = [f"--T={args.T}", f"--hidden={args.hidden}", f"--batch={args.batch}", f"--steps={args.steps}",
                 f"--lr={args.lr}", f"--eval-every={args.eval_every}"]
    pending = [(c, s) for s in seeds for c in cells]
    running, results = [], []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            c, s = pending.pop(0)
            proc = subprocess.Popen([sys.executable, __file__, "--one", c, str(s)] + forwarded, env=env,
                                    stdout=subprocess.PIPE, text=True)
            running.append((c, s, proc))
        time.sleep(0.5)
        for item in list(running):
            c, s, proc = item
            if proc.poll() is not None:
                running.remove(item)
                out = proc.stdout.read()
                if proc.returncode != 0:
                    print(f"{c} seed {s}: failed (exit {proc.returncode})", file=sys.stderr)
                    continue
                r = json.loads(out.strip().splitlines()[-1])
                results.append(r)
                print(f"{c:>9} seed {s}: final test MSE {r['final']:.5f} after {args.steps} steps, "
                      f"{r['seconds']:.0f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "baseline": BASELINE, "wall_seconds": time.perf_counter() - t0,
                   "runs": results}, f, indent=1)

    lines = [f"Adding problem, T = {args.T}: hidden {args.hidden}, batch {args.batch}, {args.steps} steps of "
             f"Adam (lr {args.lr:g}, cosine to 0.1x, clip 1.0), float32; test MSE on 1000 fixed sequences; "
             f"trivial baseline 0.167; solved: <= {args.solved:g}.", "",
             "| cell | test MSE per seed | median | first step <= 0.05 (median) | solved |", "|---|---|---|---|---|"]
    verdict = {}
    for c in cells:
        rs = sorted((r for r in results if r["cell"] == c), key=lambda r: r["seed"])
        if not rs:
            continue
        med = statistics.median(r["final"] for r in rs)
        firsts = [next((st for st, v in r["curve"] if v <= 0.05), None) for r in rs]
        reached = [f for f in firsts if f is not None]
        first = (str(int(statistics.median(reached))) + ("" if len(reached) == len(rs) else f" ({len(reached)}/{len(rs)} seeds)")
                 ) if reached else "never"
        verdict[c] = med <= args.solved
        per_seed = ", ".join(f"{r['final']:.4f}" for r in rs)
        lines.append(f"| {c} | {per_seed} | {med:.4f} | {first} | "
                     f"{'yes' if verdict[c] else 'no'} |")
    ok = all(verdict.get(c, True) for c in GATED) and not verdict.get("rnn", False)
    lines += ["", f"claim {'holds' if ok else 'does NOT hold'}: gated cells solved, plain rnn not."]
    md = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = dict(zip(cells, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for r in results:
            st, v = zip(*r["curve"])
            ax.plot(st, v, color=colors[r["cell"]], alpha=0.8, label=r["cell"] if r["seed"] == seeds[0] else None)
        ax.axhline(BASELINE, color="gray", ls="--", label="predict 1 (0.167)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("test MSE")
        ax.set_title(f"adding problem, T = {args.T}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "curves.png"), dpi=120)
        print(f"plot: {os.path.join(args.out, 'curves.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
