"""Time to quality on tiny Shakespeare (character level; first 90% train, last 10% validation).

    python benchmarks/train_shakespeare.py                       # the default recipe (= `seqengine train`)
    python benchmarks/train_shakespeare.py --recipe long         # the longer recipe (target val <= 1.55)
    python benchmarks/train_shakespeare.py --recipe long --time-limit 600 --out /tmp/long

Each recipe is a `seqengine train` command line (printed first). Validation loss is measured on the
whole validation split every `--eval-every` steps, against wall-clock training time (evaluation
included). Writes OUT/log.jsonl (the curve), OUT/checkpoint.npz, OUT/summary.json and, when matplotlib is
installed, OUT/curve.png; prints the first time the validation loss reached the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

RECIPES = {
    # seqengine train's defaults for --task chars: 1-layer LSTM, hidden 256, embedding 64, 600 steps of
    # 32 windows of 128 characters, Adam 3e-3, 30 warm-up steps, cosine to 3e-4, clip 1.0
    "default": dict(args=["--task", "chars", "--cell", "lstm", "--seed", "0"], target=1.88, budget=180),
    # 1-layer LSTM, hidden 512: ~2x the default's time per step, 2500 steps (10M characters, ~10 epochs)
    "long": dict(args=["--task", "chars", "--cell", "lstm", "--hidden", "512", "--embed", "64",
                       "--seq-len", "128", "--batch", "32", "--steps", "2500", "--lr", "2e-3",
                       "--warmup", "100", "--eval-every", "250", "--seed", "0"], target=1.55, budget=None),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    p.add_argument("--out", default=None, help="output folder (default shakespeare-RECIPE)")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (resumable)")
    p.add_argument("--resume", default=None, help="continue a stopped run from its checkpoint")
    p.add_argument("--progress", action="store_true", help="show the tqdm bar instead of evaluation lines")
    args = p.parse_args(argv)
    recipe = RECIPES[args.recipe]
    out = args.out or f"shakespeare-{args.recipe}"
    if args.resume:
        cmd = ["train", "--resume", args.resume, "--out", out]
    else:
        cmd = ["train", *recipe["args"], "--out", out]
    if args.time_limit:
        cmd += ["--time-limit", str(args.time_limit)]
    if not args.progress:
        cmd += ["--no-progress"]
    print("seqengine " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    from seqengine.cli import main as cli
    rc = cli(cmd)
    if rc != 0:
        return rc
    curve = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    hit = next((r for r in curve if r["val_loss"] <= recipe["target"]), None)
    best = min(curve, key=lambda r: r["val_loss"])
    summary = {"recipe": args.recipe, "command": "seqengine " + " ".join(cmd), "target": recipe["target"],
               "reached_at": hit, "best": best, "last": curve[-1], "curve": curve}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n| step | time (s) | train loss | val loss |\n|---|---|---|---|")
    for r in curve:
        train = "" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        print(f"| {r['step']} | {r['time']:.1f} | {train} | {r['val_loss']:.4f} |")
    if hit:
        print(f"\nvalidation loss {hit['val_loss']:.4f} <= {recipe['target']} at step {hit['step']}, "
              f"{hit['time']:.1f} s")
    else:
        print(f"\ntarget {recipe['target']} not reached; best {best['val_loss']:.4f} at step {best['step']}, "
              f"{best['time']:.1f} s")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["time"] for r in curve], [r["val_loss"] for r in curve], marker="o", label="validation")
    ax.axhline(recipe["target"], color="gray", ls="--", label=f"target {recipe['target']}")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(f"tiny Shakespeare, recipe {args.recipe}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curve.png"), dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
