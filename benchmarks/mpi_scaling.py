"""Data-parallel scaling over MPI: training throughput for 1..N ranks and the share of a step spent in
communication (seqengine.train.distributed).

    pip install -e ".[mpi]"
    python benchmarks/mpi_scaling.py                           # 1 and 2 ranks, the default chars model
    python benchmarks/mpi_scaling.py --ranks 1,2,4 --steps 40 --out benchmarks/results/mpi

Each configuration is a fresh `mpiexec -n R` job of this file (`--worker`) training the same global batch
(the `seqengine train --task chars` default: 1-layer LSTM, hidden 256, embedding 64, batch 32 windows of 128
characters; a global batch, so R ranks take 32/R rows each). Configurations:
- R ranks x cores/R Numba threads (on 2 cores: 1 process x 2 threads, 2 ranks x 1 thread): what a user runs;
- 1 rank x 1 thread: the per-rank work alone, for the parallel efficiency of ranks.
Per configuration: `--warmup` steps untimed, then `--steps` timed `train_step()` calls (no evaluation).
- step time: rank 0's wall time per step; throughput = global batch x seq_len / step time (characters/s);
- in the step's Allreduce: each rank's time inside the one fused Allreduce per step (`World.comm_seconds`),
  which includes waiting for the slowest rank; Allreduce alone: the same buffer reduced 50 times after a
  barrier (the transfer and the sum, no waiting);
- check before reporting: every rank's parameters bitwise identical, and the final parameters equal those
  of the first configuration (same seed, same global batches) within float32 reduction-order tolerance.
Writes OUT/results.json and OUT/results.md; prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

MODEL = dict(task="chars", cell="lstm", hidden=256, embed=64, seq_len=128, batch=32, lr=3e-3, warmup=0,
             eval_every=0, seed=0)


def worker(args) -> int:
    from mpi4py import MPI

    import numba
    from seqengine.train import TrainConfig, Trainer
    comm = MPI.COMM_WORLD
    trainer = Trainer(TrainConfig(**MODEL, steps=args.warmup + args.steps))
    world = trainer.world
    for _ in range(args.warmup):
        trainer.train_step()
    comm.Barrier()
    comm0, calls0 = world.comm_seconds, getattr(world, "allreduce_calls", 0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    elapsed = time.perf_counter() - t0
    comm_s = world.comm_seconds - comm0
    # the transfer alone: the gradient buffer's size, every rank already waiting
    n = trainer.model.num_params() + 1
    buf = np.ones(n, np.float32)
    comm.Barrier()
    t1 = time.perf_counter()
    for _ in range(50):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    pure = (time.perf_counter() - t1) / 50
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in trainer.model.params.values()))
    digests = comm.allgather(digest.hexdigest())
    per_rank = comm.gather({"step_s": elapsed / args.steps, "allreduce_s": comm_s / args.steps,
                            "rows": trainer.world.rows(MODEL["batch"])}, root=0)
    if comm.rank == 0:
        result = {"ranks": comm.size, "threads_per_rank": numba.get_num_threads(), "steps": args.steps,
                  "allreduce_calls": getattr(world, "allreduce_calls", 0) - calls0,
                  "step_s": elapsed / args.steps, "allreduce_s": comm_s / args.steps, "pure_allreduce_s": pure,
                  "buffer_bytes": buf.nbytes, "identical_on_every_rank": len(set(digests)) == 1,
                  "per_rank": per_rank}
        np.savez(args.worker, result=np.array(json.dumps(result)),
                 **{"params/" + k: p for k, p in trainer.model.params.items()})
    return 0


def run(ranks: int, threads: int, args) -> tuple[dict, dict]:
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        sys.exit("no mpiexec: pip install -e '.[mpi]'")
    path = os.path.join(args.scratch, f"ranks{ranks}-threads{threads}.npz")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", path,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    with np.load(path) as z:
        result = json.loads(str(z["result"][()]))
        params = {k: z[k] for k in z.files if k.startswith("params/")}
    result["load_before"] = round(load, 2)
    return result, params


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, caches)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mpi"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        from seqengine.train.distributed import guarded
        return guarded(worker, args)
    os.makedirs(args.out, exist_ok=True)
    import tempfile
    scratch = tempfile.TemporaryDirectory()
    args.scratch = scratch.name        # each configuration's final parameters, compared below
    cores = len(os.sched_getaffinity(0))
    configs = [(1, 1)] + [(r, max(1, cores // r)) for r in map(int, args.ranks.split(","))]
    configs = list(dict.fromkeys(configs))
    results, first = [], None
    for ranks, threads in configs:
        result, params = run(ranks, threads, args)
        if not result["identical_on_every_rank"]:
            sys.exit(f"{ranks} ranks: parameters differ between ranks")
        if result["allreduce_calls"] != (args.steps if ranks > 1 else result["allreduce_calls"]):
            sys.exit(f"{ranks} ranks: {result['allreduce_calls']} allreduce calls for {args.steps} steps")
        if first is None:
            first = params
        worst = max(float(np.max(np.abs(params[k] - first[k]))) for k in first)
        if worst > 1e-4:
            sys.exit(f"{ranks} ranks x {threads} threads: final parameters differ from the first configuration's "
                     f"by {worst:.2e}")
        result["max_param_diff_vs_first"] = worst
        results.append(result)
        print(f"ranks {ranks} x threads {threads}: {1e3 * result['step_s']:.1f} ms/step "
              f"(load {result['load_before']})", flush=True)
    chars = MODEL["batch"] * MODEL["seq_len"]
    base = results[0]["step_s"]
    lines = ["| ranks x threads | step (ms) | characters/s | speed-up vs 1x1 | in the step's Allreduce, per rank "
             "(ms, % of step) | Allreduce alone (ms, % of step) | max param diff vs 1x1 |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        step = r["step_s"]
        in_step = " / ".join(f"{1e3 * q['allreduce_s']:.2f} ({100 * q['allreduce_s'] / step:.1f}%)"
                             for q in r["per_rank"])
        lines.append(f"| {r['ranks']} x {r['threads_per_rank']} | {1e3 * step:.1f} | {chars / step:,.0f} | "
                     f"{base / step:.2f} | {in_step} | {1e3 * r['pure_allreduce_s']:.3f} "
                     f"({100 * r['pure_allreduce_s'] / step:.1f}%) | {r['max_param_diff_vs_first']:.1e} |")
    from mpi4py import MPI
    import numba
    machine = {"cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
               "numba": numba.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
               "model": MODEL, "steps": args.steps, "warmup": args.warmup,
               "buffer_bytes": results[0]["buffer_bytes"]}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    table = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"{machine['mpi']}; {cores} cores; gradient buffer {machine['buffer_bytes'] / 1e6:.2f} MB\n\n"
                + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
