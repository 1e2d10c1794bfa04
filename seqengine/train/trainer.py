"""Training loop, configuration and training checkpoints.

    from seqengine.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(task="chars", cell="lstm", steps=2000), out_dir="runs/shakespeare")
    trainer.fit()                                   # progress bar, periodic evaluation and checkpoints
    trainer = Trainer.resume("runs/shakespeare/checkpoint.npz")   # continues exactly where it stopped
    print(trainer.sample("ROMEO:", length=300))

A training checkpoint (format "seqengine.trainer", version 1) is an uncompressed .npz that
`np.load(path, allow_pickle=False)` reads: ``header`` (0-d unicode array, UTF-8 JSON: config, task with
its vocabulary, model shape, cell name and equations hash, step, elapsed seconds, the data and dropout
generators' states, optimizer scalars, evaluation history), ``params/<name>`` (model parameters) and
``optim/<slot>/<name>`` (optimizer moments). Writes go to a temporary file that is fsynced and renamed
over the target, so an interrupted write leaves the previous checkpoint. Resuming restores all of it:
an interrupted-and-resumed run ends with the very parameters of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..backends.cpu.threads import single_threaded_blas
from ..checkpoint import CheckpointError, write_npz_atomic
from ..plugins import UnknownCellError, get_cell
from .model import SequenceModel
from .optim import clip_grad_norm, lr_at, make_optimizer
from .distributed import World, current_world
from .tasks import Vocabulary, make_task

FORMAT = "seqengine.trainer"
VERSION = 1


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, gradient or parameter)."""


# task -> defaults for the fields left None in TrainConfig
TASK_DEFAULTS = {
    # the 3-minute recipe of benchmarks/RESULTS.md: validation loss <= 1.88 on tiny Shakespeare
    "chars": dict(hidden=256, embed=64, seq_len=128, batch=32, steps=600, lr=3e-3, clip=1.0,
                  schedule="cosine", warmup=30, eval_every=100, eval_batches=None),
    # benchmarks/adding_problem.py: every gated cell solves T = 100 with these, the plain rnn does not
    "adding": dict(hidden=64, embed=None, seq_len=100, batch=64, steps=3000, lr=1e-2, clip=1.0,
                   schedule="cosine", warmup=0, eval_every=100, eval_batches=None),
    "copy": dict(hidden=128, embed=16, seq_len=None, batch=64, steps=2000, lr=2e-3, clip=1.0,
                 schedule="cosine", warmup=0, eval_every=100, eval_batches=None),
}


@dataclass
class TrainConfig:
    """Everything that defines a run. Fields left None take the task's default (`TASK_DEFAULTS`)."""
    task: str = "chars"
    cell: str = "lstm"
    layers: int = 1
    hidden: int | None = None
    embed: int | None = None          # embedding size (token tasks)
    seq_len: int | None = None        # chars: window length; adding: T
    delay: int | None = None          # copy: the delay D (T = D + 20)
    corpus: str | None = None         # chars: a UTF-8 text file (None: the shipped tiny Shakespeare)
    batch: int | None = None
    steps: int | None = None
    lr: float | None = None
    optimizer: str = "adam"
    momentum: float = 0.9             # sgd only
    clip: float | None = None         # global gradient-norm clipping (0: none)
    schedule: str | None = None       # constant, cosine or linear (decay to lr * min_lr_ratio at `steps`)
    warmup: int | None = None
    min_lr_ratio: float = 0.1
    dropout: float = 0.0              # between layers (layers > 1)
    seed: int | None = None           # None: drawn once and stored, so a resumed run stays reproducible
    eval_every: int | None = None     # 0: only at the end
    eval_batches: int | None = None   # None: the whole validation set
    eval_batch: int = 64
    checkpoint_every: int = 0         # 0: only at the end (and when stopped early)
    dtype: str = "float32"

    def resolved(self) -> "TrainConfig":
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(TASK_DEFAULTS)}")
        values = dataclasses.asdict(self)
        for k, v in TASK_DEFAULTS[self.task].items():
            if values[k] is None:
                values[k] = v
        if values["corpus"] is not None:   # absolute, so a resumed run finds it from any folder
            values["corpus"] = os.path.abspath(os.fspath(values["corpus"]))
        if values["seed"] is None:
            values["seed"] = int(np.random.SeedSequence().entropy % 2**31)
        return TrainConfig(**values)


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a training checkpoint; `CheckpointError` for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise CheckpointError(f"{path}: not a seqengine training checkpoint (no 'header' entry)")
            head = json.loads(str(z["header"][()]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable seqengine training checkpoint "
                              f"({type(e).__name__}: {e})") from None
    fmt = head.get("format") if isinstance(head, dict) else None
    if fmt == "seqengine.rnn":
        raise CheckpointError(f"{path}: a layer checkpoint (RNN.save), not a training checkpoint; "
                              f"load it with seqengine.load()")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not a seqengine training checkpoint (format {fmt!r}, expected {FORMAT!r})")
    if not isinstance(head.get("version"), int) or head["version"] > VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {head.get('version')!r}; this seqengine "
                              f"reads versions up to {VERSION}")
    return head, arrays


def _check_cell(path, head) -> None:
    saved = head["cell"]
    try:
        cell = get_cell(saved["name"])
    except UnknownCellError as e:
        raise CheckpointError(f"{path}: the checkpoint needs cell {saved['name']!r}, which is not registered "
                              f"({e})") from None
    if cell.equations_hash() != saved["equations_hash"]:
        raise CheckpointError(f"{path}: the equations of cell {saved['name']!r} changed since the checkpoint "
                              f"was saved")


def model_from_checkpoint(path) -> tuple[SequenceModel, dict]:
    """(model with the saved parameters, header) of a training checkpoint, without building its task."""
    head, arrays = read_checkpoint(path)
    _check_cell(path, head)
    model = _build_model(head["config"], head["model"])
    _load_params(path, model, arrays)
    return model, head


def _build_model(cfg: dict, spec: dict) -> SequenceModel:
    return SequenceModel(cfg["cell"], input_kind=spec["input_kind"], input_size=spec["input_size"],
                         output_size=spec["output_size"], hidden_size=cfg["hidden"], num_layers=cfg["layers"],
                         embed_size=cfg["embed"], loss=spec["loss"], dropout=cfg["dropout"], dtype=cfg["dtype"],
                         seed=cfg["seed"])


def _load_params(path, model: SequenceModel, arrays: dict) -> None:
    for name, p in model.params.items():
        a = arrays.get("params/" + name)
        if a is None or a.shape != p.shape:
            raise CheckpointError(f"{path}: parameter {name!r} is missing or has the wrong shape "
                                  f"({None if a is None else list(a.shape)}, expected {list(p.shape)})")
        p[...] = a          # in place: the RNN layer shares these arrays


class Trainer:
    """Runs a `TrainConfig`: task, model, optimizer, data stream; `fit`, `evaluate`, `save`, `resume`."""

    def __init__(self, config: TrainConfig | dict | None = None, out_dir=None, world: World | None = None):
        if config is None:
            config = TrainConfig()
        elif isinstance(config, dict):
            config = TrainConfig(**config)
        # world: the MPI ranks training together (seqengine.train.distributed); found from the environment
        self.world = current_world() if world is None else world
        self.config = cfg = self.world.agree_config(config.resolved(), seed_drawn=config.seed is None)
        self.task = make_task(cfg.task, seq_len=cfg.seq_len, delay=cfg.delay, corpus=cfg.corpus)
        self.model = SequenceModel(cfg.cell, input_kind=self.task.input_kind, input_size=self.task.input_size,
                                   output_size=self.task.output_size, hidden_size=cfg.hidden,
                                   num_layers=cfg.layers, embed_size=cfg.embed, loss=self.task.loss,
                                   dropout=cfg.dropout, dtype=cfg.dtype, seed=cfg.seed)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.params, cfg.lr, cfg.momentum)
        # the training batches' own stream (the model's init and dropout have theirs)
        self.data_rng = np.random.default_rng([cfg.seed, 2])
        self.step = 0
        self.elapsed = 0.0                       # seconds spent in fit() (training and evaluation)
        self.history: list[dict] = []            # evaluation records {step, time, train_loss, val_loss, lr}
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.last_checkpoint: tuple[str, int] | None = None   # (path, step) of the last one written
        self.stop_requested = False              # set (e.g. by a SIGINT handler) to stop after the current step
        self._recent: list[float] = []
        self.world.attach(self)          # MPI: check the batch, rank 0's parameters

    @property
    def checkpoint_path(self) -> str | None:
        return None if self.out_dir is None else os.path.join(self.out_dir, "checkpoint.npz")

    def lr(self, step: int | None = None) -> float:
        c = self.config
        return lr_at(self.step if step is None else step, c.lr, c.schedule, total=c.steps, warmup=c.warmup,
                     min_ratio=c.min_lr_ratio)

    # -- one step --------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step on a fresh batch; returns its loss. A non-finite loss, gradient or parameter
        raises `TrainingError` (the checkpoints on disk are left as they are)."""
        cfg = self.config
        inputs, targets = self.task.train_batch(self.data_rng, cfg.batch)
        inputs, targets = self.world.local_batch(inputs, targets, 0 if self.model.last_only else 1)   # MPI: my rows
        # overflow is not warned about: a non-finite loss or gradient stops training below with a clear message
        with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
            loss = self.model.loss_and_grads(inputs, targets)
        loss = self.world.average_gradients(self.model.grads, loss)   # MPI: global-batch means, one Allreduce
        where = f"at step {self.step + 1}"
        if not math.isfinite(loss):
            self._fail(f"the training loss is {loss} {where}")
        norm = clip_grad_norm(self.model.grads, cfg.clip)
        if not math.isfinite(norm):
            self._fail(f"the gradient norm is {norm} {where} (loss {loss:.4f})")
        with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
            self.optimizer.step(self.model.grads, self.lr())
        bad = [k for k, p in self.model.params.items() if not math.isfinite(float(np.sum(p, dtype=np.float64)))]
        if bad:
            self._fail(f"parameters {bad[:3]} became non-finite {where} (loss {loss:.4f}, gradient norm {norm:.3g})")
        self.step += 1
        return loss

    def _fail(self, what: str):
        cfg = self.config
        if self.last_checkpoint:
            kept = f"the last good checkpoint is {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"
        elif self.checkpoint_path:
            kept = "no checkpoint had been written yet (use --checkpoint-every N)"
        else:
            kept = "no output folder was given, so there is no checkpoint"
        raise TrainingError(f"{what}: training stopped; {kept}. Try a lower learning rate (now {cfg.lr:g}) "
                            f"or gradient clipping (--clip, now {cfg.clip:g}).")

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, max_batches: int | None = None) -> float:
        """Mean loss over the task's evaluation data (every scored position weighs the same)."""
        max_batches = self.config.eval_batches if max_batches is None else max_batches
        total, weight = 0.0, 0
        for i, (inputs, targets) in enumerate(self.task.eval_batches(self.config.eval_batch, max_batches)):
            if i % self.world.size != self.world.rank:     # MPI: batches dealt round-robin over the ranks
                continue
            n = np.asarray(targets).shape[0] * (1 if self.model.last_only else np.asarray(targets).shape[1])
            with single_threaded_blas():
                total += self.model.evaluate(inputs, targets) * n
            weight += n
        total, weight = self.world.allreduce_sum([total, weight])
        return total / weight

    def _record(self, train_loss: float | None) -> dict:
        rec = {"step": self.step, "time": round(self.elapsed, 3),
               "train_loss": None if train_loss is None else round(train_loss, 5),
               "val_loss": round(self.evaluate(), 5), "lr": self.lr(max(0, self.step - 1))}
        self.history.append(rec)
        if self.out_dir and self.world.is_root:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    # -- the loop --------------------------------------------------------------------
    def fit(self, *, progress: bool = True, stop_after: int | None = None, time_limit: float | None = None,
            log=print) -> dict | None:
        """Train to `config.steps` (or `stop_after` more steps, or until `elapsed` reaches `time_limit`
        seconds, or `stop_requested`), evaluating every `eval_every` steps and writing a checkpoint every
        `checkpoint_every` steps and at the end. Returns the last evaluation record."""
        from tqdm import tqdm
        cfg = self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        if not self.world.is_root:       # MPI: rank 0 alone reports
            progress, log = False, None
        rec = None
        if self.step == 0 and cfg.eval_every and not self.history:
            rec = self._record(None)
            if not progress and log:
                log(self._describe(rec))
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", disable=not progress, dynamic_ncols=True,
                   smoothing=0.05, desc=f"{cfg.task}/{cfg.cell}")
        base, t0 = self.elapsed, time.perf_counter()
        ema = None
        try:
            stop = self.world.any(self.stop_requested)     # MPI: every rank stops after the same step
            while self.step < end and not stop:
                loss = self.train_step()
                self._recent.append(loss)
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                self.elapsed = base + time.perf_counter() - t0
                bar.update(1)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    rec = self._evaluate_now(log, progress, bar)
                    self.elapsed = base + time.perf_counter() - t0
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.out_dir:
                    self.save()
                bar.set_postfix_str(f"loss {ema:.4f}" + (f", val {rec['val_loss']:.4f}" if rec else "")
                                    + f", lr {self.lr(self.step - 1):.2e}", refresh=False)
                stop = self.world.any(self.stop_requested or (time_limit is not None and self.elapsed >= time_limit))
        finally:
            bar.close()
        if not self.history or self.history[-1]["step"] != self.step:
            rec = self._evaluate_now(log, progress, None)
        if self.out_dir and (self.last_checkpoint is None or self.last_checkpoint[1] != self.step):
            self.save()
        return rec or (self.history[-1] if self.history else None)

    def _evaluate_now(self, log, progress, bar):
        train = float(np.mean(self._recent)) if self._recent else None
        self._recent = []
        rec = self._record(train)
        if log:
            (bar.write if (bar is not None and progress) else log)(self._describe(rec))
        return rec

    def _describe(self, rec: dict) -> str:
        train = "" if rec["train_loss"] is None else f"train {rec['train_loss']:.4f}  "
        return (f"step {rec['step']:>6}  {train}val {rec['val_loss']:.4f}  lr {rec['lr']:.2e}  "
                f"{rec['time']:.1f} s")

    # -- checkpoints --------------------------------------------------------------------
    def header(self) -> dict:
        from .. import __version__
        cell = self.model.rnn.cell
        dropout_rng = self.model.rnn.dropout_rng
        return {
            "format": FORMAT, "version": VERSION, "seqengine_version": __version__,
            "config": dataclasses.asdict(self.config),
            "task": self.task.config(),
            "model": {"input_kind": self.model.input_kind, "input_size": self.model.input_size,
                      "output_size": self.model.output_size, "loss": self.model.loss},
            "cell": {"name": cell.name, "equations_hash": cell.equations_hash()},
            "step": self.step, "elapsed": self.elapsed,
            "rng": {"data": self.data_rng.bit_generator.state,
                    "dropout": None if dropout_rng is None else dropout_rng.bit_generator.state},
            "optimizer": self.optimizer.state_dict()[0],
            "history": self.history,
            "recent_losses": self._recent,      # training losses since the last evaluation (its train_loss)
        }

    def save(self, path=None) -> str:
        """Write a training checkpoint (default: ``out_dir/checkpoint.npz``); returns its path."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("save() needs a path (or a Trainer with out_dir)")
        arrays = {"header": np.array(json.dumps(self.header()))}
        arrays.update({"params/" + k: p for k, p in self.model.params.items()})
        arrays.update({"optim/" + k: a for k, a in self.optimizer.state_dict()[1].items()})
        self.world.on_root(lambda: write_npz_atomic(path, arrays))   # MPI: rank 0 writes; its error reaches all
        self.last_checkpoint = (path, self.step)
        return path

    @classmethod
    def resume(cls, path, out_dir=None, world: World | None = None, **overrides) -> "Trainer":
        """The trainer saved at `path`, ready to continue (`fit()`). `out_dir` defaults to the checkpoint's
        folder. `overrides` may change only steps, eval_every, eval_batches, eval_batch, checkpoint_every."""
        allowed = {"steps", "eval_every", "eval_batches", "eval_batch", "checkpoint_every"}
        unknown = set(overrides) - allowed
        if unknown:
            raise ValueError(f"resume() can change only {sorted(allowed)}; got {sorted(unknown)}")
        path = os.fspath(path)
        head, arrays = read_checkpoint(path)
        _check_cell(path, head)
        cfg = dict(head["config"])
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        trainer = cls(TrainConfig(**cfg), out_dir=os.path.dirname(os.path.abspath(path)) if out_dir is None
                      else out_dir, world=world)
        saved_vocab = head["task"].get("vocab")
        if saved_vocab is not None and saved_vocab != trainer.task.vocab.chars:
            raise CheckpointError(f"{path}: the corpus {cfg['corpus'] or '(shipped tiny Shakespeare)'} no longer "
                                  f"has the vocabulary the checkpoint was trained on")
        _load_params(path, trainer.model, arrays)
        trainer.optimizer.load_state_dict(head["optimizer"], {k[len("optim/"):]: a for k, a in arrays.items()
                                                              if k.startswith("optim/")})
        trainer.step, trainer.elapsed = int(head["step"]), float(head["elapsed"])
        trainer.history = list(head["history"])
        trainer._recent = list(head.get("recent_losses", []))
        trainer.data_rng.bit_generator.state = head["rng"]["data"]
        if head["rng"]["dropout"] is not None:
            trainer.model.rnn.dropout_rng.bit_generator.state = head["rng"]["dropout"]
        trainer.last_checkpoint = (path, trainer.step)
        trainer.world.broadcast_state(trainer)     # MPI: every rank continues from rank 0's state
        if trainer.out_dir and trainer.world.is_root:   # the log keeps only what happened up to the checkpoint
            log_path = os.path.join(trainer.out_dir, "log.jsonl")
            os.makedirs(trainer.out_dir, exist_ok=True)
            with open(log_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in trainer.history)
        return trainer

    # -- sampling --------------------------------------------------------------------
    def sample(self, prime: str = "\n", length: int = 300, temperature: float = 1.0, seed: int | None = None) -> str:
        """Text generated by a character model (task "chars") after `prime`."""
        if not hasattr(self.task, "vocab"):
            raise ValueError(f"sampling needs a character model (task 'chars'); this trainer runs {self.config.task!r}")
        from .sampling import sample
        with single_threaded_blas():
            return sample(self.model, self.task.vocab, prime, length, temperature, seed)


def vocabulary_of(head: dict) -> Vocabulary:
    return Vocabulary(head["task"]["vocab"])
