"""`RNN`: a recurrent layer of any registered cell, with checked inputs.

    rnn = se.RNN("lstm", input_size=32, hidden_size=64, seed=0)
    y, state = rnn.forward(x)              # x [T, B, 32] -> y [T, B, 64]; state {"h": [1, B, 64], ...}
    dx, dstate0 = rnn.backward(dy)         # rnn.grads: one array per rnn.params entry

States carry PyTorch's leading layers*directions axis (1 here). Input arrays
of another floating dtype or a non-contiguous layout are converted (copied);
integer, boolean or complex arrays are refused.
"""

from __future__ import annotations

import numpy as np

from . import functional
from .cell import Cell
from .plugins import get_cell

_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


class RNN:
    """One recurrent layer of `cell` (a registered name or a `seqengine.Cell`).

    Attributes: ``params`` {name: array} (matrices [H, in], vectors [H]),
    ``grads`` (same keys, set by each `backward`, not accumulated), ``cell``.
    """

    def __init__(self, cell: str | Cell, input_size: int, hidden_size: int, *, dtype=np.float32,
                 backend: str = "cpu", seed: int | None = None):
        self.cell = get_cell(cell)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64; got {dtype!r}") from None
        if self.dtype not in _DTYPES:
            raise TypeError(f"dtype must be float32 or float64; got {self.dtype}")
        if backend not in functional.BACKENDS:
            raise ValueError(f"backend must be one of {functional.BACKENDS}; got {backend!r}")
        self.backend = backend
        self.training = True
        rng = np.random.default_rng(seed)
        self.params = functional.init_params(self.cell, self.input_size, self.hidden_size, self.dtype, rng)
        self.grads: dict[str, np.ndarray] = {}
        self._tape = None

    def __repr__(self):
        return (f"RNN({self.cell.name!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"dtype={self.dtype.name})")

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.cell.state)

    def train(self, mode: bool = True) -> "RNN":
        self.training = bool(mode)
        return self

    def eval(self) -> "RNN":
        return self.train(False)

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s: np.zeros((1, batch, self.hidden_size), self.dtype) for s in self.state_names}

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

    def _check_x(self, x) -> np.ndarray:
        shape_text = f"[T, B, input_size={self.input_size}]"
        x = self._as_array("x", x, shape_text)
        if x.ndim != 3:
            raise ValueError(f"x must have shape {shape_text}; got a {x.ndim}-d array of shape {x.shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have shape {shape_text}; got feature size {x.shape[2]} (shape {x.shape})")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x must have at least one step and one sequence; got shape {x.shape}")
        return x

    def _check_state(self, name: str, state, batch: int) -> dict[str, np.ndarray]:
        shape = (1, batch, self.hidden_size)
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
            if a.ndim != 3 or a.shape[0] != 1 or a.shape[2] != self.hidden_size:
                raise ValueError(f"{name}[{s!r}] must have shape [layers*directions=1, B, hidden_size="
                                 f"{self.hidden_size}]; got {a.shape}")
            if a.shape[1] != batch:
                raise ValueError(f"{name}[{s!r}] has batch size {a.shape[1]} but x has batch size {batch}")
            out[s] = a[0]
        return out

    # -- forward / backward ------------------------------------------------------
    def forward(self, x, state: dict | None = None):
        """x [T, B, input_size] -> y [T, B, hidden_size], final {s: [1, B, hidden_size]}."""
        x = self._check_x(x)
        T, B, _ = x.shape
        state0 = ({s: np.zeros((B, self.hidden_size), self.dtype) for s in self.state_names}
                  if state is None else self._check_state("state", state, B))
        y, final, tape = functional.forward(self.cell, self.params, x, state0, self.training, self.backend)
        self._tape = tape
        self._shape = (T, B)
        return y, {s: v[None] for s, v in final.items()}

    __call__ = forward

    def backward(self, dy, dstate: dict | None = None):
        """Gradients of the last training forward.

        dy [T, B, hidden_size] (or None for zeros), dstate {s: [1, B, hidden_size]} adjoint of the final
        state (None for zeros) -> dx [T, B, input_size], dstate0 {s: [1, B, hidden_size]}; sets `grads`.
        """
        if self._tape is None:
            raise RuntimeError("backward() needs a forward() in training mode first (rnn.train(); rnn.forward(x))")
        T, B = self._shape
        shape_text = f"[T={T}, B={B}, hidden_size={self.hidden_size}]"
        if dy is None:
            dy = np.zeros((T, B, self.hidden_size), self.dtype)
        dy = self._as_array("dy", dy, shape_text)
        if dy.shape != (T, B, self.hidden_size):
            raise ValueError(f"dy must have the shape of the forward output {shape_text}; got {dy.shape}")
        dfinal = ({s: np.zeros((B, self.hidden_size), self.dtype) for s in self.state_names}
                  if dstate is None else self._check_state("dstate", dstate, B))
        dx, dstate0, grads = functional.backward(self.cell, self.params, self._tape, dy, dfinal, self.backend)
        self.grads = grads
        return dx, {s: v[None] for s, v in dstate0.items()}
