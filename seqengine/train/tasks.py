"""Built-in tasks, all generated or shipped (nothing is downloaded).

    task = make_task("adding", seq_len=100)
    inputs, targets = task.train_batch(rng, batch=32)
    for inputs, targets in task.eval_batches(batch=64): ...

- ``adding`` (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015): inputs [T, B, 2], channel 0
  U(0, 1) numbers, channel 1 a marker that is 1 at one step in the first half and one in the second; the
  target [B, 1] is the sum of the two marked numbers; loss "mse_last". Predicting 1 always scores
  Var(u1 + u2) = 1/6 = 0.167.
- ``copy`` (copy memory, Arjovsky et al. 2016) with delay D: 10 symbols from 1..8, then D-1 blanks (0), a
  delimiter (9), 10 blanks; T = D + 20. The targets are blanks, then the 10 symbols in the last 10 steps;
  loss "xent" on every step. A model that outputs blanks and then guesses scores 10 ln 8 / (D + 20).
- ``chars``: a character-level language model on any UTF-8 text file (default: the shipped tiny Shakespeare).
  The vocabulary is the sorted set of the file's characters; the first 90% trains, the last 10% validates.
  Training batches are random windows of seq_len + 1 characters; validation covers the whole split in
  consecutive windows. Loss "xent".

A task's random numbers come only from the generator passed to `train_batch` (the trainer's data stream,
saved in checkpoints); evaluation data are fixed by the task's own seed.
"""

from __future__ import annotations

import math
import os

import numpy as np


class CorpusError(ValueError):
    """A text corpus that cannot be used: missing, unreadable, not UTF-8, empty or too short."""


class Task:
    name = "task"
    input_kind = "features"
    loss = "mse_last"
    input_size = output_size = 1
    baseline: float | None = None   # the loss of a trivial predictor, for reports

    def config(self) -> dict:
        raise NotImplementedError

    def train_batch(self, rng: np.random.Generator, batch: int):
        raise NotImplementedError

    def eval_batches(self, batch: int, max_batches: int | None = None):
        raise NotImplementedError


class AddingTask(Task):
    name = "adding"
    input_kind = "features"
    loss = "mse_last"
    input_size, output_size = 2, 1
    baseline = 1.0 / 6.0

    def __init__(self, seq_len: int = 100, eval_size: int = 1000, eval_seed: int = 1234):
        if seq_len < 2:
            raise ValueError(f"the adding problem needs seq_len >= 2; got {seq_len}")
        self.seq_len, self.eval_size, self.eval_seed = int(seq_len), int(eval_size), int(eval_seed)
        self._eval = self._generate(np.random.default_rng(eval_seed), self.eval_size)

    def config(self) -> dict:
        return {"name": self.name, "seq_len": self.seq_len}

    def _generate(self, rng, batch):
        T = self.seq_len
        x = np.zeros((T, batch, 2), np.float32)
        x[:, :, 0] = rng.random((T, batch), dtype=np.float32)
        half = T // 2
        first = rng.integers(0, half, batch)
        second = rng.integers(half, T, batch)
        cols = np.arange(batch)
        x[first, cols, 1] = 1.0
        x[second, cols, 1] = 1.0
        y = (x[first, cols, 0] + x[second, cols, 0])[:, None]          # [B, 1]
        return x, y.astype(np.float32)

    def train_batch(self, rng, batch):
        return self._generate(rng, batch)

    def eval_batches(self, batch, max_batches=None):
        n = self.eval_size if max_batches is None else min(self.eval_size, batch * max_batches)
        for i in range(0, n, batch):
            yield self._eval[0][:, i:i + batch], self._eval[1][i:i + batch]


class CopyTask(Task):
    name = "copy"
    input_kind = "tokens"
    loss = "xent"
    input_size = output_size = 10     # 0 blank, 1..8 symbols, 9 delimiter
    n_copy = 10

    def __init__(self, delay: int = 20, eval_size: int = 512, eval_seed: int = 1234):
        if delay < 1:
            raise ValueError(f"the copy task needs delay >= 1; got {delay}")
        self.delay, self.eval_size = int(delay), int(eval_size)
        self.seq_len = self.delay + 2 * self.n_copy
        self.baseline = self.n_copy * math.log(8) / self.seq_len
        self._eval = self._generate(np.random.default_rng(eval_seed), self.eval_size)

    def config(self) -> dict:
        return {"name": self.name, "delay": self.delay}

    def _generate(self, rng, batch):
        T, n = self.seq_len, self.n_copy
        symbols = rng.integers(1, 9, (n, batch))
        x = np.zeros((T, batch), np.int64)
        y = np.zeros((T, batch), np.int64)
        x[:n] = symbols
        x[T - n - 1] = 9
        y[T - n:] = symbols
        return x, y

    def train_batch(self, rng, batch):
        return self._generate(rng, batch)

    def eval_batches(self, batch, max_batches=None):
        n = self.eval_size if max_batches is None else min(self.eval_size, batch * max_batches)
        for i in range(0, n, batch):
            yield self._eval[0][:, i:i + batch], self._eval[1][:, i:i + batch]


def read_corpus(path) -> str:
    """The text of `path` (UTF-8); a `CorpusError` saying why when it cannot be used."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CorpusError(f"corpus {path!r} does not exist") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus {path!r} is a directory, not a text file") from None
    except PermissionError:
        raise CorpusError(f"corpus {path!r} is not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus {path!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise CorpusError(f"corpus {path!r} cannot be read ({e.strerror or e})") from None
    if not text:
        raise CorpusError(f"corpus {path!r} is empty; give a text file with some characters in it")
    return text


class Vocabulary:
    """Characters <-> ids (the sorted set of a corpus's characters)."""

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        missing = sorted({c for c in text if c not in self.index})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"{len(missing)} character(s) not in the model's vocabulary of {len(self.chars)}: "
                             f"{shown}; the vocabulary is {self.chars!r}")
        return np.fromiter((self.index[c] for c in text), np.int64, len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharTask(Task):
    name = "chars"
    input_kind = "tokens"
    loss = "xent"

    def __init__(self, corpus: str | None = None, seq_len: int = 128, val_fraction: float = 0.1):
        from ..data import default_corpus_path
        self.corpus = corpus
        path = default_corpus_path() if corpus is None else corpus
        text = read_corpus(path)
        self.vocab = Vocabulary("".join(sorted(set(text))))
        self.input_size = self.output_size = len(self.vocab)
        self.seq_len = int(seq_len)
        data = self.vocab.encode(text).astype(np.int32 if len(self.vocab) < 2**31 else np.int64)
        n_train = int(len(data) * (1 - val_fraction))
        self.train_data, self.val_data = data[:n_train], data[n_train:]
        need = self.seq_len + 1
        if len(self.train_data) < need or len(self.val_data) < need:
            raise CorpusError(f"corpus {path!r} has {len(text)} characters: too short for seq_len={self.seq_len} "
                              f"(the training 90% and the validation 10% each need at least {need}); "
                              f"use a longer text or a smaller --seq-len")
        self.baseline = math.log(len(self.vocab))

    def config(self) -> dict:
        return {"name": self.name, "corpus": self.corpus, "seq_len": self.seq_len, "vocab": self.vocab.chars}

    def train_batch(self, rng, batch):
        T = self.seq_len
        starts = rng.integers(0, len(self.train_data) - T, batch)
        idx = starts[None, :] + np.arange(T + 1)[:, None]              # [T+1, B]
        win = self.train_data[idx].astype(np.int64)
        return win[:-1], win[1:]

    def eval_batches(self, batch, max_batches=None):
        T = self.seq_len
        n_win = (len(self.val_data) - 1) // T
        starts = np.arange(n_win) * T
        if max_batches is not None:
            starts = starts[:batch * max_batches]
        for i in range(0, len(starts), batch):
            idx = starts[None, i:i + batch] + np.arange(T + 1)[:, None]
            win = self.val_data[idx].astype(np.int64)
            yield win[:-1], win[1:]


TASKS = ("adding", "copy", "chars")


def make_task(name: str, *, seq_len: int | None = None, delay: int | None = None, corpus: str | None = None) -> Task:
    if name == "adding":
        return AddingTask(seq_len or 100)
    if name == "copy":
        return CopyTask(delay or 20)
    if name == "chars":
        return CharTask(corpus, seq_len or 128)
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
