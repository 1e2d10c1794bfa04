"""Training: losses, model gradients, optimizers, tasks, trainer, resume, command line and bad input.

References are independent: central finite differences (float64) for every model gradient, torch for the
losses, the optimizers and clipping, exact equality for reproducibility and resume.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import seqengine as se
from seqengine.checkpoint import CheckpointError
from seqengine.cli import main
from seqengine.train import (SGD, Adam, AddingTask, CharTask, CopyTask, CorpusError, SequenceModel, TrainConfig,
                             Trainer, TrainingError, clip_grad_norm, cross_entropy, lr_at, mean_squared_error,
                             read_checkpoint, sample)

from _seqengine_testing import CORPUS_TEXT

torch = pytest.importorskip("torch")


def tiny_chars(corpus, **kw):
    cfg = dict(task="chars", corpus=corpus, cell="lstm", hidden=8, embed=4, seq_len=12, batch=4, steps=8,
               lr=1e-2, warmup=2, eval_every=4, eval_batches=2, seed=3)
    cfg.update(kw)
    return TrainConfig(**cfg)


# -- losses against torch ---------------------------------------------------------------
def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5)) * 3
    targets = rng.integers(0, 5, 7)
    loss, d = cross_entropy(logits.copy(), targets)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(targets))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(d, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_mean_squared_error_matches_torch():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    loss, d = mean_squared_error(pred, target)
    t = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.functional.mse_loss(t, torch.tensor(target))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(d, t.grad.numpy(), rtol=1e-12)


# -- model gradients against finite differences ----------------------------------------------
CASES = [  # (cell, input_kind, loss, layers)
    ("lstm", "tokens", "xent", 1),
    ("gru", "tokens", "xent_last", 1),
    ("lstm", "features", "mse_last", 1),
    ("rnn", "features", "mse", 2),
    ("peephole", "tokens", "xent", 2),
]


@pytest.mark.parametrize("cell,input_kind,loss,layers", CASES)
def test_model_gradients_match_finite_differences(cell, input_kind, loss, layers):
    T, B, V, D, O = 4, 3, 5, 3, 4
    rng = np.random.default_rng(7)
    model = SequenceModel(cell, input_kind=input_kind, input_size=V if input_kind == "tokens" else D,
                          output_size=O, hidden_size=4, num_layers=layers, embed_size=3, loss=loss,
                          dtype=np.float64, seed=0)
    for p in model.params.values():    # larger than the init, so the nonlinearities leave their linear range
        p[...] = rng.uniform(-0.8, 0.8, p.shape)
    inputs = rng.integers(0, V, (T, B)) if input_kind == "tokens" else rng.standard_normal((T, B, D))
    if loss.startswith("xent"):
        targets = rng.integers(0, O, (B,) if loss.endswith("_last") else (T, B))
    else:
        targets = rng.standard_normal((B, O) if loss.endswith("_last") else (T, B, O))
    value = model.loss_and_grads(inputs, targets)
    assert set(model.grads) == set(model.params)
    eps, worst = 1e-6, {}
    for name, p in model.params.items():
        flat, numeric = p.reshape(-1), np.empty(p.size)
        for i in range(p.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = model.evaluate(inputs, targets)
            flat[i] = keep - eps
            down = model.evaluate(inputs, targets)
            flat[i] = keep
            numeric[i] = (up - down) / (2 * eps)
        analytic = model.grads[name].reshape(-1)
        worst[name] = np.max(np.abs(analytic - numeric) / np.maximum(1.0, np.abs(numeric)))
    assert model.evaluate(inputs, targets) == pytest.approx(value, rel=1e-12)
    assert max(worst.values()) < 1e-7, worst
    if input_kind == "tokens":   # rows of tokens never seen get exactly zero gradient
        unseen = sorted(set(range(V)) - set(np.unique(inputs)))
        assert np.all(model.grads["embed.weight"][unseen] == 0)


# -- optimizers, clipping, schedule against torch --------------------------------------------------
@pytest.mark.parametrize("which", ["adam", "sgd", "sgd_nesterov"])
def test_optimizers_match_torch(which):
    rng = np.random.default_rng(2)
    shapes = {"a": (3, 4), "b": (4,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    if which == "adam":
        opt, topt = Adam(params, lr=0.01), torch.optim.Adam(list(tparams.values()), lr=0.01)
    else:
        nesterov = which == "sgd_nesterov"
        opt = SGD(params, lr=0.05, momentum=0.9, nesterov=nesterov)
        topt = torch.optim.SGD(list(tparams.values()), lr=0.05, momentum=0.9, nesterov=nesterov)
    for step in range(6):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        lr = 0.01 * (1 + step) if which == "adam" else 0.05
        for group in topt.param_groups:
            group["lr"] = lr
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(grads, lr=lr)
    for k in shapes:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(3)
    grads = {"a": rng.standard_normal((5, 3)) * 4, "b": rng.standard_normal(7)}
    ts = [torch.tensor(g.copy(), requires_grad=True) for g in grads.values()]
    for t, g in zip(ts, grads.values()):
        t.grad = torch.tensor(g.copy())
    ref = torch.nn.utils.clip_grad_norm_(ts, 1.5)
    norm = clip_grad_norm(grads, 1.5)
    assert norm == pytest.approx(ref.item(), rel=1e-12)
    for t, g in zip(ts, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)
    small = {"a": np.full(3, 0.1)}
    assert clip_grad_norm(small, 1.5) == pytest.approx(math.sqrt(0.03)) and np.all(small["a"] == 0.1)


def test_lr_schedule():
    assert lr_at(0, 1.0, "cosine", total=100, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, "cosine", total=100, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, "cosine", total=100, warmup=10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, "cosine", total=100, warmup=10, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_at(100, 1.0, "cosine", total=100, warmup=10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(55, 2.0, "linear", total=100, warmup=10, min_ratio=0.0) == pytest.approx(1.0)
    assert lr_at(77, 2.0, "constant", total=100) == 2.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_at(0, 1.0, "exponential")


# -- tasks -------------------------------------------------------------------------------------
def test_adding_task():
    task = AddingTask(seq_len=20)
    x, y = task.train_batch(np.random.default_rng(0), 64)
    assert x.shape == (20, 64, 2) and y.shape == (64, 1) and x.dtype == np.float32
    markers = x[:, :, 1]
    assert np.all(markers.sum(axis=0) == 2)
    assert np.all(markers[:10].sum(axis=0) == 1) and np.all(markers[10:].sum(axis=0) == 1)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=0), rtol=1e-6)
    assert task.baseline == pytest.approx(1 / 6)


def test_copy_task():
    task = CopyTask(delay=5)
    x, y = task.train_batch(np.random.default_rng(0), 8)
    assert x.shape == y.shape == (25, 8)
    np.testing.assert_array_equal(y[-10:], x[:10])
    assert np.all((x[:10] >= 1) & (x[:10] <= 8)) and np.all(x[14] == 9) and np.all(x[10:14] == 0)
    assert np.all(x[15:] == 0) and np.all(y[:15] == 0)
    assert task.baseline == pytest.approx(10 * math.log(8) / 25)


def test_char_task_split_and_vocab(corpus):
    task = CharTask(corpus, seq_len=12)
    assert task.vocab.chars == "".join(sorted(set(CORPUS_TEXT)))
    n = int(len(CORPUS_TEXT) * 0.9)
    assert task.vocab.decode(task.train_data) == CORPUS_TEXT[:n]
    assert task.vocab.decode(task.val_data) == CORPUS_TEXT[n:]
    x, y = task.train_batch(np.random.default_rng(0), 3)
    np.testing.assert_array_equal(x[1:], y[:-1])
    windows = list(task.eval_batches(batch=4))
    assert sum(w[0].shape[1] for w in windows) == (len(task.val_data) - 1) // 12


def test_default_corpus_is_shipped():
    from seqengine.data import default_corpus_path
    path = default_corpus_path()
    assert os.path.getsize(path) == 1115394
    assert len(CharTask(seq_len=64).vocab) == 65


# -- trainer: reproducibility, learning, resume ---------------------------------------------
def test_same_seed_same_numbers(corpus):
    a, b = Trainer(tiny_chars(corpus)), Trainer(tiny_chars(corpus))
    la = [a.train_step() for _ in range(4)]
    lb = [b.train_step() for _ in range(4)]
    assert la == lb
    for k in a.model.params:
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
    c = Trainer(tiny_chars(corpus, seed=4))
    assert [c.train_step() for _ in range(4)] != la


def test_adding_problem_loss_falls():
    t = Trainer(TrainConfig(task="adding", cell="gru", seq_len=10, hidden=32, batch=32, steps=300, lr=1e-2,
                            eval_every=0, seed=0))
    before = t.evaluate()
    t.fit(progress=False, log=None)
    assert before > 0.1 and t.evaluate() < 0.01   # the trivial predictor scores 0.167


def _params(trainer_or_path):
    if isinstance(trainer_or_path, Trainer):
        return {k: v.copy() for k, v in trainer_or_path.model.params.items()}
    head, arrays = read_checkpoint(trainer_or_path)
    return {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(corpus, tmp_path, monkeypatch):
    # two layers with dropout: the dropout stream must be restored too
    cfg = tiny_chars(corpus, layers=2, dropout=0.3, steps=9, checkpoint_every=3)
    full = Trainer(cfg, out_dir=tmp_path / "full")
    full.fit(progress=False, log=None)

    broken = Trainer(cfg, out_dir=tmp_path / "broken")
    real_step = Trainer.train_step

    def crash_at_five(self):
        if self.step == 5:
            raise KeyboardInterrupt("killed")
        return real_step(self)
    monkeypatch.setattr(Trainer, "train_step", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        broken.fit(progress=False, log=None)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    ckpt = tmp_path / "broken" / "checkpoint.npz"
    assert read_checkpoint(ckpt)[0]["step"] == 3

    resumed = Trainer.resume(ckpt)
    assert resumed.step == 3 and resumed.optimizer.steps == 3
    resumed.fit(progress=False, log=None)
    assert resumed.step == 9
    for k, v in _params(full).items():
        np.testing.assert_array_equal(_params(resumed)[k], v)
    assert _params(tmp_path / "broken" / "checkpoint.npz").keys() == _params(full).keys()
    assert resumed.history == [dict(r, time=r2["time"]) for r, r2 in zip(full.history, resumed.history)]
    log = [json.loads(line) for line in open(tmp_path / "broken" / "log.jsonl")]
    assert [r["step"] for r in log] == [0, 4, 8, 9]


def test_cli_stop_and_resume_equals_uninterrupted_run(tmp_path, capsys):
    common = ["train", "--task", "adding", "--seq-len", "8", "--hidden", "6", "--batch", "4", "--steps", "10",
              "--seed", "5", "--eval-every", "5", "--no-progress", "--optimizer", "sgd", "--schedule", "linear"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--stop-after", "4"]) == 0
    out = capsys.readouterr().out
    assert "paused at step 4/10" in out and "continue with: seqengine train --resume" in out
    assert main(["train", "--resume", str(tmp_path / "b" / "checkpoint.npz"), "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    # resuming a finished run does nothing more
    assert main(["train", "--resume", str(tmp_path / "b" / "checkpoint.npz"), "--no-progress"]) == 0
    assert "finished at step 10/10" in capsys.readouterr().out
    a, b = _params(tmp_path / "a" / "checkpoint.npz"), _params(tmp_path / "b" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_cli_chars_train_then_sample(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "chars", "--corpus", corpus, "--hidden", "8", "--embed", "4", "--seq-len", "12",
                 "--batch", "4", "--steps", "6", "--eval-every", "3", "--eval-batches", "2", "--seed", "0",
                 "--out", str(out), "--no-progress", "--prime", "First", "--sample-length", "20"]) == 0
    text = capsys.readouterr().out
    assert "finished at step 6/6" in text and "sample:\nFirst" in text
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [0, 3, 6]
    assert main(["sample", str(out / "checkpoint.npz"), "--prime", "All:", "--length", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("All:") and len(first) == len("All:") + 30 + 1     # print adds one newline
    assert set(first) <= set(CORPUS_TEXT) | {"\n"}
    main(["sample", str(out / "checkpoint.npz"), "--prime", "All:", "--length", "30", "--seed", "1"])
    assert capsys.readouterr().out == first     # seeded sampling


def test_sample_api_is_seeded(corpus):
    t = Trainer(tiny_chars(corpus))
    s1 = t.sample("All", 25, temperature=0.5, seed=2)
    assert s1 == t.sample("All", 25, temperature=0.5, seed=2) and s1.startswith("All") and len(s1) == 28


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["cells"], ["check"], ["kernel"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: seqengine" in capsys.readouterr().out


# -- bad input -------------------------------------------------------------------------------------
def test_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CorpusError, match=r"corpus '.*empty\.txt' is empty"):
        CharTask(str(empty))
    assert main(["train", "--task", "chars", "--corpus", str(empty), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: corpus '") and err.rstrip().endswith("is empty; give a text file with some "
                                                                     "characters in it")


def test_unreadable_corpus(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus '.*missing\.txt' does not exist"):
        CharTask(str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match=r"is a directory, not a text file"):
        CharTask(str(tmp_path))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"abc\xff\xfe")
    with pytest.raises(CorpusError, match=r"is not UTF-8 text \(byte 3"):
        CharTask(str(binary))
    short = tmp_path / "short.txt"
    short.write_text("hello world")
    with pytest.raises(CorpusError, match=r"has 11 characters: too short for seq_len=128"):
        CharTask(str(short))
    if os.geteuid() != 0:
        locked = tmp_path / "locked.txt"
        locked.write_text("x" * 1000)
        locked.chmod(0)
        with pytest.raises(CorpusError, match="permission denied"):
            CharTask(str(locked))


def test_prime_outside_vocabulary(corpus, tmp_path, capsys):
    t = Trainer(tiny_chars(corpus), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the model's vocabulary of \d+: 'Z', '€'"):
        t.sample("Z€e", 5)
    with pytest.raises(ValueError, match="the prime must be a non-empty string"):
        t.sample("", 5)
    with pytest.raises(ValueError, match="temperature must be positive; got 0"):
        t.sample("All", 5, temperature=0)
    path = t.save()
    assert main(["sample", path, "--prime", "Zero"]) == 2
    assert "error: 1 character(s) not in the model's vocabulary" in capsys.readouterr().err


@pytest.fixture
def adding_checkpoint(tmp_path):
    t = Trainer(TrainConfig(task="adding", seq_len=6, hidden=4, batch=2, steps=2, eval_every=0, seed=0),
                out_dir=tmp_path / "adding")
    t.fit(progress=False, log=None)
    return t.checkpoint_path


def test_checkpoint_from_another_task_or_cell(adding_checkpoint, tmp_path, capsys):
    assert main(["sample", adding_checkpoint]) == 2
    assert ("a model of task 'adding'; sampling text needs a character model"
            in capsys.readouterr().err)
    assert main(["train", "--resume", adding_checkpoint, "--task", "chars"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint of task 'adding' with cell 'lstm' does not match --task 'chars' (checkpoint: 'adding')" in err
    assert main(["train", "--resume", adding_checkpoint, "--cell", "gru", "--hidden", "8"]) == 2
    err = capsys.readouterr().err
    assert "--cell 'gru' (checkpoint: 'lstm'), --hidden 8 (checkpoint: 4)" in err
    # a layer checkpoint is not a training checkpoint, and the reverse
    layer = tmp_path / "layer.npz"
    se.RNN("lstm", 2, 4, seed=0).save(layer)
    with pytest.raises(CheckpointError, match=r"a layer checkpoint \(RNN.save\), not a training checkpoint"):
        read_checkpoint(layer)
    assert main(["sample", str(layer)]) == 2
    assert "not a training checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a seqengine checkpoint"):
        se.load(adding_checkpoint)
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer.resume(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable seqengine training checkpoint"):
        Trainer.resume(junk)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "diverge"
    rc = main(["train", "--task", "adding", "--seq-len", "6", "--hidden", "4", "--batch", "4", "--steps", "20",
               "--optimizer", "sgd", "--lr", "1e30", "--clip", "0", "--checkpoint-every", "1", "--eval-every", "0",
               "--seed", "0", "--out", str(out), "--no-progress"])
    assert rc == 3
    err = capsys.readouterr().err
    head, arrays = read_checkpoint(out / "checkpoint.npz")
    good = head["step"]
    assert f"at step {good + 1}" in err and "training stopped; the last good checkpoint is " in err
    assert f"checkpoint.npz (step {good})" in err and "Try a lower learning rate (now 1e+30)" in err
    assert all(np.all(np.isfinite(a)) for a in arrays.values())


def test_nan_loss_message(corpus, tmp_path, monkeypatch):
    t = Trainer(tiny_chars(corpus, checkpoint_every=2, eval_every=0), out_dir=tmp_path)
    t.fit(progress=False, log=None, stop_after=2)
    assert t.last_checkpoint[1] == 2
    before = _params(t.checkpoint_path)
    monkeypatch.setattr(SequenceModel, "loss_and_grads", lambda self, x, y, state=None: float("nan"))
    with pytest.raises(TrainingError, match=r"the training loss is nan at step 3: training stopped; the last good "
                                            r"checkpoint is .*checkpoint\.npz \(step 2\)"):
        t.fit(progress=False, log=None)
    after = _params(t.checkpoint_path)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
