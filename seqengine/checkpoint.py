"""Checkpoints of an `RNN`: a NumPy .npz archive with a JSON header, readable without seqengine.

    rnn.save("model.npz")
    rnn = se.load("model.npz")

Format version 1 (docs/LAYERS.md has the full specification): an uncompressed .npz (a zip of .npy
files) holding ``header``, a 0-d unicode array with UTF-8 JSON text, and one float array per parameter
under ``params/<name>``. Everything loads with ``np.load(path, allow_pickle=False)``.

Saving writes a temporary file in the target's folder, flushes it to disk and renames it into place
(atomic on POSIX and Windows), so an interrupted save leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .cell import Cell

FORMAT = "seqengine.rnn"
VERSION = 1
PARAM_PREFIX = "params/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: not one, a newer format, a missing or changed cell."""


def header(rnn) -> dict:
    from . import __version__
    return {
        "format": FORMAT,
        "version": VERSION,
        "seqengine_version": __version__,
        "cell": {"name": rnn.cell.name, "equations_hash": rnn.cell.equations_hash(),
                 "state": list(rnn.cell.state), "output": rnn.cell.output_name, "equations": rnn.cell.equations},
        "hyperparameters": {"input_size": rnn.input_size, "hidden_size": rnn.hidden_size,
                            "num_layers": rnn.num_layers, "bidirectional": rnn.bidirectional,
                            "batch_first": rnn.batch_first, "dropout": rnn.dropout, "backend": rnn.backend,
                            "seed": int(rnn.seed) if isinstance(rnn.seed, (int, np.integer)) else None},
        "dtype": rnn.dtype.name,
        "params": [{"name": n, "shape": list(a.shape)} for n, a in rnn.params.items()],
    }


def save(rnn, path) -> None:
    """Write `rnn` to `path` (exactly that name; no suffix is added)."""
    path = os.fspath(path)
    arrays = {"header": np.array(json.dumps(header(rnn), indent=1))}
    for name, a in rnn.params.items():
        arrays[PARAM_PREFIX + name] = np.ascontiguousarray(a, dtype=rnn.dtype)
    write_npz_atomic(path, arrays)


def write_npz_atomic(path, arrays: dict) -> None:
    """np.savez to a temporary file beside `path`, fsync, then rename: an interrupted write never
    leaves a half-written file under the real name."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {param name: array}) of a checkpoint, checking only the format and version."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if "header" not in z.files:
                raise CheckpointError(f"{path}: not a seqengine checkpoint (no 'header' entry)")
            head = json.loads(str(z["header"][()]))
            params = {k[len(PARAM_PREFIX):]: z[k] for k in z.files if k.startswith(PARAM_PREFIX)}
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: not a readable seqengine checkpoint ({type(e).__name__}: {e})") from None
    if head.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seqengine checkpoint (format {head.get('format')!r}, "
                              f"expected {FORMAT!r})")
    if not isinstance(head.get("version"), int) or head["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {head.get('version')!r}; this seqengine "
                              f"reads versions up to {VERSION}")
    return head, params


def load(path, cell: Cell | None = None):
    """The `RNN` saved at `path`. Its cell is looked up in the registry by name, or given as `cell`; it
    must have the equations the checkpoint was saved with (same `Cell.equations_hash()`)."""
    from .plugins import UnknownCellError, get_cell
    from .rnn import RNN
    head, params = read(path)
    saved = head["cell"]
    if cell is None:
        try:
            cell = get_cell(saved["name"])
        except UnknownCellError as e:
            raise CheckpointError(f"{path}: the checkpoint needs cell {saved['name']!r}, which is not "
                                  f"registered ({e}); install its plugin or pass cell=") from None
    elif not isinstance(cell, Cell) or cell.name != saved["name"]:
        raise CheckpointError(f"{path}: the checkpoint needs cell {saved['name']!r}; got cell="
                              f"{getattr(cell, 'name', cell)!r}")
    if cell.equations_hash() != saved["equations_hash"]:
        raise CheckpointError(f"{path}: the equations of cell {saved['name']!r} changed since the checkpoint "
                              f"was saved (equations hash {saved['equations_hash'][:12]}... saved, "
                              f"{cell.equations_hash()[:12]}... now); saved equations:\n{saved['equations']}")
    hp = head["hyperparameters"]
    rnn = RNN(cell, hp["input_size"], hp["hidden_size"], num_layers=hp["num_layers"],
              bidirectional=hp["bidirectional"], batch_first=hp["batch_first"], dropout=hp["dropout"],
              dtype=head["dtype"], backend=hp["backend"], seed=hp["seed"])
    names = [p["name"] for p in head["params"]]
    if set(names) != set(params) or set(names) != set(rnn.params):
        raise CheckpointError(f"{path}: parameters {sorted(params)} do not match the layer's "
                              f"{sorted(rnn.params)}")
    for name in rnn.params:
        a = params[name]
        if a.shape != rnn.params[name].shape:
            raise CheckpointError(f"{path}: parameter {name!r} has shape {list(a.shape)}, expected "
                                  f"{list(rnn.params[name].shape)}")
        rnn.params[name][...] = a   # in place: keeps the stacked storage the kernels use without copies
    return rnn
