"""Data-parallel training over MPI (seqengine.train.distributed), with 2 ranks on loopback.

The reference is independent of MPI: the same configuration trained in this (single) process. Each MPI run
is `mpiexec -n 2` of this file as a script (`worker` below) or of the command line, in a subprocess with a
timeout, so a hang fails the test instead of stalling the suite. Skipped, with the reason, when mpi4py or
an mpiexec is missing (`pip install -e ".[mpi]"` provides both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from seqengine.train import TrainConfig, Trainer, read_checkpoint
from seqengine.train.distributed import LOCAL, MPIWorld, _RowSlice

HERE = os.path.abspath(__file__)
TIMEOUT = 120   # seconds for one mpiexec job; a hang shows up as a failure, not a stalled suite
# float32 gradients summed in another order: measured 2.4e-7 at most after 8 steps that move parameters by 5e-2
RTOL, ATOL = 1e-5, 2e-6


def _mpiexec():
    """(argv prefix, None) or (None, why MPI tests cannot run)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install -e '.[mpi]')"
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        return None, "no mpiexec on PATH or next to the Python interpreter (pip install -e '.[mpi]')"
    return [exe, "-n", "2"], None


MPIEXEC, WHY_NOT = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=f"MPI tests skipped: {WHY_NOT}")


def _env():
    env = dict(os.environ)
    for v in ("SEQENGINE_DISTRIBUTED", "NUMBA_NUM_THREADS"):
        env.pop(v, None)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def mpirun(*args, ranks=None, timeout=TIMEOUT):
    """mpiexec -n 2 (or the MPMD `ranks` argument lists) -> CompletedProcess; fails the test on a timeout."""
    argv = MPIEXEC + list(args) if ranks is None else [MPIEXEC[0]] + [a for i, r in enumerate(ranks)
                                                                      for a in ([":"] if i else []) + ["-n", "1"] + r]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec did not finish within {timeout} s (a hang): {' '.join(argv)}\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")


def worker(*args):
    return [sys.executable, HERE, *args]


def chars_config(corpus, **kw):
    cfg = dict(task="chars", corpus=corpus, cell="lstm", hidden=8, embed=4, seq_len=12, batch=4, steps=8,
               lr=1e-2, warmup=2, eval_every=4, eval_batches=3, eval_batch=4, seed=3)
    cfg.update(kw)
    return cfg


def reference(cfg: dict, out_dir=None) -> Trainer:
    trainer = Trainer(TrainConfig(**cfg), out_dir=out_dir, world=LOCAL)
    trainer.fit(progress=False, log=None)
    return trainer


def assert_params_match(params: dict, ref: Trainer):
    assert set(params) == set(ref.model.params)
    for name, p in ref.model.params.items():
        np.testing.assert_allclose(params[name], p, rtol=RTOL, atol=ATOL, err_msg=name)


# -- pieces that need no MPI ---------------------------------------------------------------------
def test_rows_split_every_row_once_with_the_first_ranks_taking_the_remainder():
    for size, batch in [(2, 4), (2, 5), (3, 7), (4, 4)]:
        spans = [MPIWorld.rows(types.SimpleNamespace(size=size, rank=r), batch) for r in range(size)]
        assert spans[0][0] == 0 and spans[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        sizes = [hi - lo for lo, hi in spans]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_dropout_masks_are_rows_of_the_global_batch():
    full = np.random.default_rng(5).random((3, 5, 2))
    lo_rng, hi_rng = _RowSlice(np.random.default_rng(5), 0, 3, 5), _RowSlice(np.random.default_rng(5), 3, 5, 5)
    np.testing.assert_array_equal(lo_rng.random((3, 3, 2)), full[:, :3])
    np.testing.assert_array_equal(hi_rng.random((3, 2, 2)), full[:, 3:])
    with pytest.raises(Exception, match=r"expected \[T, 2"):
        hi_rng.random((3, 5, 2))


def test_a_plain_run_does_not_import_mpi4py(corpus):
    code = ("import sys, json; from seqengine.train import TrainConfig, Trainer; "
            f"t = Trainer(TrainConfig(**json.loads({json.dumps(json.dumps(chars_config(corpus, steps=1)))}))); "
            "t.train_step(); print(type(t.world).__name__, sys.modules.get('mpi4py') is not None)")
    env = _env()
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"):
        env.pop(v, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["World", "False"]


# -- 2 ranks against the single-process run ------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("case", [
    # even split, token inputs, loss on every step
    dict(),
    # 5 rows over 2 ranks (3 + 2), features, loss on the last step, 2 layers with dropout, sgd
    dict(task="adding", corpus=None, cell="gru", embed=None, seq_len=10, layers=2, dropout=0.3, batch=5,
         optimizer="sgd", lr=0.05, clip=0.5, eval_batch=8),
], ids=["chars-even", "adding-uneven-dropout"])
def test_two_ranks_end_with_the_single_process_parameters(tmp_path, corpus, case):
    cfg = {**chars_config(corpus), **case}
    ref = reference(cfg)
    result = tmp_path / "result.npz"
    out = mpirun(*worker("train", json.dumps(cfg), str(result)))
    assert out.returncode == 0, out.stderr
    with np.load(result) as z:
        params = {k[len("params/"):]: z[k] for k in z.files if k.startswith("params/")}
        summary = json.loads(str(z["summary"][()]))
    assert summary["identical_on_every_rank"] is True
    assert summary["allreduce_calls"] == cfg["steps"]      # one fused Allreduce per step
    assert summary["ranks"] == 2 and summary["rows"] == [(cfg["batch"] + 1) // 2, cfg["batch"] // 2]
    assert_params_match(params, ref)
    got = [(h["step"], h["val_loss"], h["train_loss"]) for h in summary["history"]]
    want = [(h["step"], h["val_loss"], h["train_loss"]) for h in ref.history]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got[1:]], [w[1:] for w in want[1:]], rtol=1e-4)


@needs_mpi
def test_command_line_under_mpiexec_writes_once_and_resumes_to_the_uninterrupted_result(tmp_path, corpus):
    cfg = chars_config(corpus, eval_batch=64)      # the command line's evaluation batch: one, so rank 1 has none
    ref = reference(cfg)
    out_dir = tmp_path / "run"
    options = ["--task", "chars", "--corpus", corpus, "--cell", "lstm", "--hidden", "8", "--embed", "4",
               "--seq-len", "12", "--batch", "4", "--steps", "8", "--lr", "1e-2", "--warmup", "2",
               "--eval-every", "4", "--eval-batches", "3", "--seed", "3", "--out", str(out_dir),
               "--no-progress", "--sample-length", "0"]
    cli = [sys.executable, "-m", "seqengine.cli", "train"]
    first = mpirun(*cli, *options, "--stop-after", "5")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("paused at step 5/8") == 1          # rank 0 alone reports
    head, _ = read_checkpoint(out_dir / "checkpoint.npz")
    assert head["step"] == 5
    second = mpirun(*cli, "--resume", str(out_dir / "checkpoint.npz"), "--no-progress", "--sample-length", "0")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("finished at step 8/8") == 1
    head, arrays = read_checkpoint(out_dir / "checkpoint.npz")
    assert head["step"] == 8
    assert_params_match({k[len("params/"):]: a for k, a in arrays.items() if k.startswith("params/")}, ref)
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 4, 5, 8]               # one line per evaluation (5: the pause)
    np.testing.assert_allclose([r["val_loss"] for r in log if r["step"] != 5],
                               [r["val_loss"] for r in ref.history], rtol=1e-4)


# -- faults: a clear message and a non-zero exit, never a hang -------------------------------------
@needs_mpi
def test_a_rank_that_raises_takes_the_job_down_with_its_error(corpus):
    out = mpirun(*worker("fail", json.dumps(chars_config(corpus, steps=50))), timeout=60)
    assert out.returncode != 0
    assert "rank 1 of 2 failed; aborting the job" in out.stderr
    assert "RuntimeError: injected fault on rank 1 at step 3" in out.stderr


@needs_mpi
def test_a_batch_smaller_than_the_ranks_is_refused(corpus, tmp_path):
    out = mpirun(sys.executable, "-m", "seqengine.cli", "train", "--task", "chars", "--corpus", corpus,
                 "--hidden", "8", "--seq-len", "12", "--batch", "1", "--steps", "2", "--out", str(tmp_path / "r"),
                 "--no-progress", timeout=60)
    assert out.returncode != 0
    assert "error: batch 1 is smaller than the 2 MPI ranks: every rank needs at least one sequence" in out.stderr
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


@needs_mpi
def test_ranks_started_with_different_options_are_refused(corpus, tmp_path):
    cli = [sys.executable, "-m", "seqengine.cli", "train", "--task", "chars", "--corpus", corpus, "--hidden", "8",
           "--seq-len", "12", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "r"), "--no-progress"]
    out = mpirun(ranks=[cli + ["--batch", "4"], cli + ["--batch", "6"]], timeout=60)
    assert out.returncode != 0
    assert "the MPI ranks were given different training configurations: rank 1 has batch=6 (rank 0: 4)" in out.stderr


# -- the worker: `mpiexec -n 2 python tests/test_mpi.py MODE ...` ----------------------------------
def _worker_train(cfg_json: str, result_path: str) -> int:
    import hashlib

    from mpi4py import MPI
    trainer = Trainer(TrainConfig(**json.loads(cfg_json)))     # the world comes from mpiexec's environment
    trainer.fit(progress=False, log=None)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in trainer.model.params.values()))
    digests = MPI.COMM_WORLD.allgather(digest.hexdigest())
    rows = MPI.COMM_WORLD.allgather(trainer.world._rows[0])
    if trainer.world.is_root:
        summary = {"identical_on_every_rank": len(set(digests)) == 1, "ranks": trainer.world.size, "rows": rows,
                   "allreduce_calls": trainer.world.allreduce_calls, "history": trainer.history}
        np.savez(result_path, summary=np.array(json.dumps(summary)),
                 **{"params/" + k: p for k, p in trainer.model.params.items()})
    return 0


def _worker_fail(cfg_json: str) -> int:
    trainer = Trainer(TrainConfig(**json.loads(cfg_json)))
    if trainer.world.rank == 1:
        step = trainer.train_step

        def faulty():
            if trainer.step == 2:
                raise RuntimeError(f"injected fault on rank 1 at step {trainer.step + 1}")
            return step()
        trainer.train_step = faulty
    trainer.fit(progress=False, log=None)
    return 0


if __name__ == "__main__":
    from seqengine.train.distributed import guarded
    mode, *rest = sys.argv[1:]
    sys.exit(guarded({"train": _worker_train, "fail": _worker_fail}[mode], *rest))
