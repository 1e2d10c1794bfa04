"""Checkpoints: `rnn.save(path)` / `se.load(path)` round trip, the documented format (read here with
NumPy and json only), refusals (missing cell, changed equations, other formats) and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import seqengine as se
from seqengine.checkpoint import CheckpointError

ELMAN = "h = tanh(W @ x + U @ h_prev + b)"


def test_round_trip_keeps_everything(tmp_path):
    rnn = se.RNN("gru", 2, 3, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25,
                 dtype=np.float64, seed=11)
    path = tmp_path / "model.ckpt"
    rnn.save(path)
    assert os.listdir(tmp_path) == ["model.ckpt"], "saved under exactly the given name, no temporary left"
    back = se.load(path)
    assert isinstance(back, se.RNN)
    assert back.cell is se.get_cell("gru")
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "dropout",
                 "dtype", "backend", "seed"):
        assert getattr(back, attr) == getattr(rnn, attr), attr
    assert list(back.params) == list(rnn.params)
    for k in rnn.params:
        assert np.array_equal(back.params[k], rnn.params[k]) and back.params[k].dtype == np.float64
    x = np.random.default_rng(0).standard_normal((3, 4, 2))
    y, final = rnn.eval().forward(x, lengths=[4, 1, 2])
    y_back, final_back = back.eval().forward(x, lengths=[4, 1, 2])
    assert np.array_equal(y_back, y) and np.array_equal(final_back["h"], final["h"])


def test_format_is_readable_without_seqengine(tmp_path):
    rnn = se.RNN("lstm", 2, 3, num_layers=2, seed=1)
    path = tmp_path / "m.npz"
    rnn.save(path)
    with np.load(path, allow_pickle=False) as z:
        head = json.loads(str(z["header"]))
        assert head["format"] == "seqengine.rnn" and head["version"] == 1
        assert head["cell"]["name"] == "lstm"
        assert head["cell"]["equations_hash"] == se.get_cell("lstm").equations_hash()
        assert head["cell"]["state"] == ["h", "c"]
        assert head["hyperparameters"] == {"input_size": 2, "hidden_size": 3, "num_layers": 2,
                                           "bidirectional": False, "batch_first": False, "dropout": 0.0,
                                           "backend": "cpu", "seed": 1}
        assert head["dtype"] == "float32"
        assert [p["name"] for p in head["params"]] == list(rnn.params)
        assert head["params"][0] == {"name": "l0.W_i", "shape": [3, 2]}
        assert sorted(z.files) == sorted(["header"] + [f"params/{k}" for k in rnn.params])
        for k, a in rnn.params.items():
            assert np.array_equal(z[f"params/{k}"], a) and z[f"params/{k}"].dtype == np.float32


def test_refuses_missing_cell_and_changed_equations(tmp_path):
    mine = se.Cell(name="ckpt_elman", state=["h"], equations=ELMAN)
    path = tmp_path / "m.npz"
    se.RNN(mine, 2, 3, seed=0).save(path)
    with pytest.raises(CheckpointError, match=r"needs cell 'ckpt_elman', which is not registered"):
        se.load(path)
    back = se.load(path, cell=mine)                                     # an unregistered cell, passed in
    assert back.cell is mine and back.params["W"].shape == (3, 2)
    changed = se.Cell(name="ckpt_elman", state=["h"], equations="h = tanh(W @ x + U @ h_prev) + b")
    with pytest.raises(CheckpointError, match=r"(?s)the equations of cell 'ckpt_elman' changed since the checkpoint "
                                              r"was saved .*h = tanh\(W @ x \+ U @ h_prev \+ b\)"):
        se.load(path, cell=changed)
    with pytest.raises(CheckpointError, match=r"needs cell 'ckpt_elman'; got cell='gru'"):
        se.load(path, cell=se.get_cell("gru"))
    assert issubclass(CheckpointError, ValueError)


def _rewrite(path, out, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    head = json.loads(str(arrays["header"]))
    head.update(changes)
    arrays["header"] = np.array(json.dumps(head))
    with open(out, "wb") as f:
        np.savez(f, **arrays)


def test_refuses_other_files(tmp_path):
    path = tmp_path / "m.npz"
    se.RNN("gru", 2, 3, seed=0).save(path)
    _rewrite(path, tmp_path / "v2.npz", version=2)
    with pytest.raises(CheckpointError, match=r"checkpoint format version 2; this seqengine reads versions up to 1"):
        se.load(tmp_path / "v2.npz")
    _rewrite(path, tmp_path / "other.npz", format="something.else")
    with pytest.raises(CheckpointError, match=r"not a seqengine checkpoint \(format 'something.else', "
                                              r"expected 'seqengine.rnn'\)"):
        se.load(tmp_path / "other.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match=r"not a seqengine checkpoint \(no 'header' entry\)"):
        se.load(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match=r"not a readable seqengine checkpoint"):
        se.load(tmp_path / "junk.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params/W_r"] = np.zeros((3, 5), np.float32)
    with open(tmp_path / "shape.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match=r"parameter 'W_r' has shape \[3, 5\], expected \[3, 2\]"):
        se.load(tmp_path / "shape.npz")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "interrupt"])
def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "m.npz"
    old = se.RNN("gru", 2, 3, seed=0)
    old.save(path)
    new = se.RNN("gru", 2, 3, seed=1)
    real_write = np.lib.format.write_array
    calls = []

    def write_then_fail(*args, **kwargs):            # the header and one parameter get written, then it dies
        calls.append(1)
        if len(calls) > 2:
            raise error
        return real_write(*args, **kwargs)
    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(type(error)):
        new.save(path)
    monkeypatch.undo()
    assert len(calls) == 3, "the save must have failed half-way"
    assert os.listdir(tmp_path) == ["m.npz"], "no temporary file may be left behind"
    back = se.load(path)
    for k in old.params:
        assert np.array_equal(back.params[k], old.params[k])
    new.save(path)                                   # and a later save replaces it
    assert np.array_equal(se.load(path).params["W_r"], new.params["W_r"])
