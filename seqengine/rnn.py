"""`RNN`: stacked, bidirectional recurrent layers of any registered cell, with checked inputs.

    rnn = se.RNN("lstm", input_size=32, hidden_size=64, seed=0)
    y, state = rnn.forward(x)              # x [T, B, 32] -> y [T, B, 64]; state {"h": [1, B, 64], ...}
    dx, dstate0 = rnn.backward(dy)         # rnn.grads: one array per rnn.params entry

States carry PyTorch's leading layers*directions axis. Input arrays of another
floating dtype or a non-contiguous layout are converted (copied); integer,
boolean or complex arrays are refused. The math lives in `seqengine.layers`
(stacks, directions, dropout) over `seqengine.functional` (one layer); this
class validates, owns the parameters and keeps the tape between forward and
backward.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import finite, functional, layers
from .cell import Cell
from .compiler.parse import parse_cell
from .plugins import get_cell

_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


class RNN:
    """`num_layers` recurrent layers of `cell` (a registered name or a `seqengine.Cell`), as torch.nn.LSTM.

    Arguments after `hidden_size` are keyword-only (PyTorch's positional order differs between layers):
    num_layers (layer k > 0 reads layer k-1's output, directions concatenated), bidirectional,
    batch_first (x, y, dx, dy are [B, T, ...]; states stay [layers*directions, B, H]), dropout (on the
    input of every layer k > 0, training mode only, drawn from a generator seeded by `seed`; backward
    reuses the forward's masks), dtype (float32 or float64), backend, seed (parameters and dropout),
    check_finite (after each forward and backward, raise `seqengine.finite.NonFiniteError` naming the step
    and the value of the first NaN/Inf; True costs one `np.isfinite` scan of the outputs and the tape, "all"
    also replays every forward step in NumPy to catch a NaN/Inf that no saved value carries).

    Parameter names: a single unidirectional layer keeps the cell's plain names (``W_i``, ``b_ii`` ...);
    otherwise every name carries its layer and direction, ``l0.W_i``, ``l0_reverse.W_i``, ``l1.W_i`` ...
    (torch's ``weight_ih_l0_reverse``). ``layer_params(k, reverse)`` gives one layer's arrays under plain names.

    Attributes: ``params`` {name: array} (matrices [H, in], vectors [H]; C-contiguous, ordered by layer,
    direction, cell parameter), ``grads`` (same keys, set by each `backward`, not accumulated), ``cell``,
    ``dropout_rng`` (the NumPy Generator of the dropout masks; save and restore its
    ``bit_generator.state`` to resume a run exactly).
    States: {s: [num_layers * num_directions, B, H]}, index layer * num_directions + direction.
    """

    def __init__(self, cell: str | Cell, input_size: int, hidden_size: int, *, num_layers: int = 1,
                 bidirectional: bool = False, batch_first: bool = False, dropout: float = 0.0,
                 dtype=np.float32, backend: str = "cpu", seed: int | None = None, check_finite: bool = False):
        self.cell = get_cell(cell)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bidirectional = _flag("bidirectional", bidirectional)
        self.batch_first = _flag("batch_first", batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout applies between layers, so it has no effect with num_layers=1",
                          UserWarning, stacklevel=2)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from None
        if self.dtype not in _DTYPES:
            raise TypeError(f"dtype must be float32 or float64; got {self.dtype}")
        if backend not in functional.BACKENDS:
            raise ValueError(f"backend must be one of {functional.BACKENDS}; got {backend!r}")
        self.backend = backend
        self.seed = seed
        self.training = True
        self._cell_params = tuple(parse_cell(self.cell).params)
        self.params = layers.init_params(self.cell, self.input_size, self.hidden_size, self.num_layers,
                                         self.bidirectional, self.dtype, np.random.default_rng(seed))
        self._shapes = {name: a.shape for name, a in self.params.items()}
        # dropout draws from its own stream, so a given seed gives the same parameters with or without dropout
        self.dropout_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.grads: dict[str, np.ndarray] = {}
        self._tape = None
        # check_finite (seqengine.finite): stop at the first NaN/Inf, naming its step and value
        if not (isinstance(check_finite, (bool, np.bool_)) or check_finite == "all"):
            raise ValueError(f"check_finite must be False, True or 'all'; got {check_finite!r}")
        self.check_finite = check_finite if check_finite == "all" else bool(check_finite)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v, default in (
            ("num_layers", self.num_layers, 1), ("bidirectional", self.bidirectional, False),
            ("batch_first", self.batch_first, False), ("dropout", self.dropout, 0.0)) if v != default)
        return (f"RNN({self.cell.name!r}, input_size={self.input_size}, hidden_size={self.hidden_size}{extra}, "
                f"dtype={self.dtype.name})")

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.cell.state)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.num_directions * self.hidden_size

    def train(self, mode: bool = True) -> "RNN":
        self.training = bool(mode)
        return self

    def eval(self) -> "RNN":
        return self.train(False)

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s: np.zeros((self.num_layers * self.num_directions, batch, self.hidden_size), self.dtype)
                for s in self.state_names}

    def param_name(self, name: str, layer: int = 0, reverse: bool = False) -> str:
        """The key in `params` of cell parameter `name` of layer `layer`, direction `reverse`."""
        return layers.param_prefix(layer, reverse, self.num_layers, self.bidirectional) + name

    def layer_params(self, layer: int = 0, reverse: bool = False) -> dict[str, np.ndarray]:
        """{plain name: array} of one layer and direction (the arrays of `params`, not copies)."""
        if not 0 <= layer < self.num_layers or (reverse and not self.bidirectional):
            raise ValueError(f"layer must be in 0..{self.num_layers - 1} (reverse only when bidirectional); "
                             f"got layer={layer!r}, reverse={reverse!r}")
        return {p: self.params[self.param_name(p, layer, reverse)] for p in self._cell_params}

    # -- input checks ------------------------------------------------------------
    def _as_array(self, name: str, value, shape_text: str) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            if hasattr(value, "__array__") or isinstance(value, (list, tuple)):
                value = np.asarray(value)
            else:
                raise TypeError(f"{name} must be a NumPy array of shape {shape_text}; got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (it is converted to {self.dtype}); "
                            f"got dtype {value.dtype}. Convert it first, e.g. {name}.astype(np.{self.dtype})")
        return np.ascontiguousarray(value, dtype=self.dtype)

    def _seq_text(self, last: str) -> str:
        return f"[B, T, {last}]" if self.batch_first else f"[T, B, {last}]"

    def _bf_hint(self) -> str:
        return " (batch_first=True: x is [B, T, input_size])" if self.batch_first else ""

    def _check_x(self, x) -> np.ndarray:
        """x in the user's layout -> x [T, B, input_size] (time-major, contiguous)."""
        shape_text = self._seq_text(f"input_size={self.input_size}")
        x = self._as_array("x", x, shape_text)
        if x.ndim != 3:
            raise ValueError(f"x must have shape {shape_text}; got a {x.ndim}-d array of shape {x.shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape {shape_text}; got feature size {x.shape[2]} (shape {x.shape})")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x must have at least one step and one sequence; got shape {x.shape}")
        return np.ascontiguousarray(x.transpose(1, 0, 2)) if self.batch_first else x

    def _check_state(self, name: str, state, batch: int) -> dict[str, np.ndarray]:
        n = self.num_layers * self.num_directions
        shape = (n, batch, self.hidden_size)
        if not isinstance(state, dict):
            raise TypeError(f"{name} must be a dict {{state name: array of shape {list(shape)}}} with keys "
                            f"{list(self.state_names)}; got {type(state).__name__}")
        missing = [s for s in self.state_names if s not in state]
        extra = [s for s in state if s not in self.state_names]
        if missing or extra:
            raise ValueError(f"{name} must have exactly the keys {list(self.state_names)}; "
                             f"missing {missing}, unexpected {extra}")
        out = {}
        for s in self.state_names:
            a = self._as_array(f"{name}[{s!r}]", state[s], str(list(shape)))
            if a.ndim != 3 or a.shape[0] != n or a.shape[2] != self.hidden_size:
                why = "" if n == 1 else f" (num_layers={self.num_layers} * num_directions={self.num_directions})"
                raise ValueError(f"{name}[{s!r}] must have shape [layers*directions={n}, B, hidden_size="
                                 f"{self.hidden_size}]{why}; got {a.shape}")
            if a.shape[1] != batch:
                raise ValueError(f"{name}[{s!r}] has batch size {a.shape[1]} but x has batch size {batch}"
                                 f"{self._bf_hint()}")
            out[s] = a
        return out

    def _check_lengths(self, lengths, T: int, B: int) -> np.ndarray | None:
        if lengths is None:
            return None
        if not isinstance(lengths, np.ndarray):
            if hasattr(lengths, "__array__") or isinstance(lengths, (list, tuple)):
                lengths = np.asarray(lengths)
            else:
                raise TypeError(f"lengths must be an integer array of shape [B={B}]; got {type(lengths).__name__}")
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array of shape [B={B}] (one length per sequence); "
                            f"got dtype {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape [B={B}], one length per sequence of x; got shape "
                             f"{lengths.shape}{self._bf_hint()}")
        bad = np.flatnonzero((lengths < 1) | (lengths > T))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"lengths must be between 1 and T={T} (the steps in x); got {int(lengths[i])} "
                             f"at index {i}{self._bf_hint()}")
        return np.ascontiguousarray(lengths, dtype=np.int64)

    def _layer_params(self) -> list[list[dict]]:
        """params as [layer][direction] {plain name: array}, after checking what a user may have assigned."""
        for name, shape in self._shapes.items():
            a = self.params.get(name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != self.dtype \
                    or not a.flags.c_contiguous:
                got = (f"{type(a).__name__}" if not isinstance(a, np.ndarray)
                       else f"{a.dtype} array of shape {a.shape}{'' if a.flags.c_contiguous else ', not contiguous'}")
                raise ValueError(f"params[{name!r}] must be a C-contiguous {self.dtype} array of shape "
                                 f"{list(shape)}; got {got}")
        return layers.split_params(self.params, self._cell_params, self.num_layers, self.bidirectional)

    # -- forward / backward ------------------------------------------------------
    def forward(self, x, state: dict | None = None, lengths=None):
        """x [T, B, input_size] -> y [T, B, D*hidden_size], final {s: [layers*D, B, hidden_size]}.

        D = 2 when bidirectional (forward direction first along the last axis). With batch_first, x and y
        are [B, T, ...]. lengths [B] (any order, 1..T): y is zero past each length, each final state is
        taken at the sequence's own last step, and the reverse direction starts there. In training mode a
        unidirectional RNN's y is read-only: it is the memory the tape keeps for backward, not a copy.
        """
        x = self._check_x(x)
        T, B, _ = x.shape
        lengths = self._check_lengths(lengths, T, B)
        state0 = self.zero_state(B) if state is None else self._check_state("state", state, B)
        params = self._layer_params()
        y, final, tape = layers.forward(self.cell, params, x, state0, self.training,
                                        lengths=lengths, dropout=self.dropout, rng=self.dropout_rng,
                                        backend=self.backend)
        self._tape = tape
        if self.check_finite:   # check_finite: raises seqengine.finite.NonFiniteError
            finite.check_forward(self.cell, params, x, state0, y, final, tape, lengths=lengths, backend=self.backend,
                                 mode=self.check_finite)
        self._shape = (T, B)
        return (y.transpose(1, 0, 2) if self.batch_first else y), final

    __call__ = forward

    def backward(self, dy, dstate: dict | None = None):
        """Gradients of the last training forward.

        dy [T, B, D*hidden_size] (or None for zeros; [B, T, ...] with batch_first), dstate
        {s: [layers*D, B, hidden_size]} adjoint of the final state (None for zeros)
        -> dx [T, B, input_size], dstate0 {s: [layers*D, B, hidden_size]}; sets `grads`.
        """
        if self._tape is None:
            raise RuntimeError("backward() needs a forward() in training mode first (rnn.train(); rnn.forward(x))")
        T, B = self._shape
        shape = (B, T, self.output_size) if self.batch_first else (T, B, self.output_size)
        order = "B={}, T={}" if self.batch_first else "T={1}, B={0}"
        shape_text = f"[{order.format(B, T)}, {'2*' if self.bidirectional else ''}hidden_size={self.output_size}]"
        if dy is None:
            dy = np.zeros(shape, self.dtype)
        dy = self._as_array("dy", dy, shape_text)
        if dy.shape != shape:
            raise ValueError(f"dy must have the shape of the forward output {shape_text}; got {dy.shape}"
                             f"{' (batch_first=True)' if self.batch_first else ''}")
        if self.batch_first:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        dfinal = self.zero_state(B) if dstate is None else self._check_state("dstate", dstate, B)
        params = self._layer_params()
        dx, dstate0, grads = layers.backward(self.cell, params, self._tape, dy, dfinal, self.backend)
        self.grads = {self.param_name(p, k, bool(d)): grads[k][d][p]
                      for k in range(self.num_layers) for d in range(self.num_directions)
                      for p in self._cell_params}
        if self.check_finite:   # check_finite: raises seqengine.finite.NonFiniteError
            finite.check_backward(self.cell, params, self._tape, dy, dfinal, dx, dstate0, grads, backend=self.backend)
        return (dx.transpose(1, 0, 2) if self.batch_first else dx), dstate0

    # -- streaming -----------------------------------------------------------------
    def step(self, x_t, state: dict | None = None):
        """One time step for inference: x_t [B, input_size], state {s: [num_layers, B, H]} (None: zeros)
        -> y_t [B, hidden_size], new state {s: [num_layers, B, H]}.

        Runs in inference mode whatever `training` says (no dropout, no tape); feeding a sequence step by
        step gives the numbers of `forward` on the whole of it. Unidirectional RNNs only.
        """
        if self.bidirectional:
            raise ValueError("step() needs bidirectional=False: the reverse direction starts at the end of "
                             "the sequence, so it cannot be streamed; use forward() on the whole sequence")
        shape_text = f"[B, input_size={self.input_size}]"
        x_t = self._as_array("x_t", x_t, shape_text)
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size or x_t.shape[0] < 1:
            raise ValueError(f"x_t must have shape {shape_text} (one time step); got shape {x_t.shape}")
        B = x_t.shape[0]
        state = self.zero_state(B) if state is None else self._check_state("state", state, B)
        params = self._layer_params()
        new = {s: np.empty((self.num_layers, B, self.hidden_size), self.dtype) for s in self.state_names}
        inp = x_t[None]                                                 # [1, B, input_size]
        for k in range(self.num_layers):
            y, final, _ = functional.forward(self.cell, params[k][0], inp, {s: state[s][k] for s in self.state_names},
                                             False, self.backend)
            for s in self.state_names:
                new[s][k] = final[s]
            inp = y
        return inp[0], new

    # -- interop and checkpoints ---------------------------------------------------
    def load_torch_state_dict(self, state_dict) -> "RNN":
        """Copy the weights of a torch.nn.LSTM / GRU / RNN (`module.state_dict()`) into `params`."""
        from .interop import load_torch_state_dict
        load_torch_state_dict(self, state_dict)
        return self

    def torch_state_dict(self):
        """`params` as the state dict of the matching torch.nn.LSTM / GRU / RNN (torch tensors)."""
        from .interop import torch_state_dict
        return torch_state_dict(self)

    def save(self, path) -> None:
        """Write a checkpoint (see docs/LAYERS.md): written to a temporary file, then renamed into place."""
        from .checkpoint import save
        save(self, path)
