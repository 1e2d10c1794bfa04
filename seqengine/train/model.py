"""A sequence model around the recurrent stack: input -> `RNN` -> linear head, and its losses.

    model = SequenceModel("lstm", input_kind="tokens", input_size=65, output_size=65, hidden_size=256,
                          embed_size=64, loss="xent", seed=0)
    loss = model.loss_and_grads(tokens, targets)      # tokens [T, B] int; targets [T, B] int
    model.params, model.grads                          # {name: array}; grads set (not accumulated) by each call

Shapes (T steps, B sequences, H hidden, O outputs):
    tokens    [T, B] int          input_kind "tokens": rows of the embedding `embed.weight` [V, E]
    features  [T, B, D] float     input_kind "features": fed to the cell's input matrices W (a linear map)
    y         [T, B, H]           the stack's output
    out       [T, B, O] or [B, O] the head `head.weight` [O, H], `head.bias` [O] on every step, or on
                                  the last step only for the losses "xent_last" and "mse_last"

Losses (means over the positions they score):
    "xent"       softmax cross-entropy on every step, targets [T, B] int
    "xent_last"  softmax cross-entropy on the last step (sequence classification), targets [B] int
    "mse"        mean squared error on every step, targets [T, B, O]
    "mse_last"   mean squared error on the last step (e.g. the adding problem), targets [B, O]

Parameter names: ``embed.weight``, ``rnn.<name as in RNN.params>``, ``head.weight``, ``head.bias``. The
``rnn.*`` arrays are the very arrays of ``model.rnn.params``, so an optimizer that updates ``model.params``
in place updates the layer. The head and embedding are plain NumPy. The trainer runs each step with BLAS
held to one thread: right after a recurrent kernel the Numba workers are still spinning, and a
multithreaded BLAS call then fought them for the 2 cores (a 68 MFLOP head matmul measured up to 3 s
instead of 2 ms).
"""

from __future__ import annotations

import numpy as np

from ..rnn import RNN

LOSSES = ("xent", "xent_last", "mse", "mse_last")
INPUT_KINDS = ("tokens", "features")


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits [N, C] against class indices targets [N]; (loss, dlogits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)                     # softmax [N, C]
    rows = np.arange(len(targets))
    p_true = z[rows, targets]
    loss = float(-np.mean(np.log(np.maximum(p_true, np.finfo(z.dtype).tiny)), dtype=np.float64))
    z[rows, targets] -= 1
    z /= len(targets)
    return loss, z


def mean_squared_error(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """mean((pred - target)^2) over all entries; (loss, dpred)."""
    diff = pred - target
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    return loss, diff * diff.dtype.type(2.0 / diff.size)


class SequenceModel:
    """Embedding (token input) or direct features -> `RNN` stack -> linear head, with one loss."""

    def __init__(self, cell, *, input_kind: str, input_size: int, output_size: int, hidden_size: int,
                 num_layers: int = 1, embed_size: int | None = None, loss: str = "xent", dropout: float = 0.0,
                 dtype=np.float32, seed: int | None = None):
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}; got {input_kind!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
        self.input_kind, self.loss = input_kind, loss
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.embed_size = int(embed_size or input_size) if input_kind == "tokens" else None
        rnn_in = self.embed_size if input_kind == "tokens" else self.input_size
        self.rnn = RNN(cell, rnn_in, hidden_size, num_layers=num_layers, dropout=dropout, dtype=dtype, seed=seed)
        self.dtype = self.rnn.dtype
        # the embedding and head draw from a stream of their own: the RNN's parameters are those of RNN(seed=seed)
        rng = np.random.default_rng(None if seed is None else [int(seed), 1])
        self.params: dict[str, np.ndarray] = {}
        if input_kind == "tokens":   # as torch.nn.Embedding: N(0, 1)
            self.params["embed.weight"] = rng.standard_normal((self.input_size, self.embed_size)).astype(self.dtype)
        for name, a in self.rnn.params.items():
            self.params["rnn." + name] = a
        bound = 1.0 / np.sqrt(hidden_size)   # as torch.nn.Linear
        self.params["head.weight"] = rng.uniform(-bound, bound, (self.output_size, hidden_size)).astype(self.dtype)
        self.params["head.bias"] = rng.uniform(-bound, bound, self.output_size).astype(self.dtype)
        self.grads: dict[str, np.ndarray] = {}

    @property
    def last_only(self) -> bool:
        return self.loss.endswith("_last")

    def num_params(self) -> int:
        return sum(a.size for a in self.params.values())

    def train(self, mode: bool = True) -> "SequenceModel":
        self.rnn.train(mode)
        return self

    def eval(self) -> "SequenceModel":
        return self.train(False)

    def sync(self) -> None:
        """Point ``rnn.*`` entries back at the layer (after ``params`` entries were replaced, e.g. on load)."""
        for name in self.rnn.params:
            self.rnn.params[name] = self.params["rnn." + name]

    # -- forward / backward ------------------------------------------------------
    def _input(self, inputs) -> np.ndarray:
        inputs = np.asarray(inputs)
        if self.input_kind == "tokens":
            if inputs.dtype.kind not in "iu" or inputs.ndim != 2:
                raise TypeError(f"token input must be an integer array [T, B]; got {inputs.dtype} {inputs.shape}")
            if inputs.size and (inputs.min() < 0 or inputs.max() >= self.input_size):
                raise ValueError(f"token ids must be in 0..{self.input_size - 1}; got {inputs.min()}..{inputs.max()}")
            return self.params["embed.weight"][inputs]                  # [T, B, E]
        return inputs

    def forward(self, inputs, state: dict | None = None):
        """inputs [T, B] tokens or [T, B, D] features -> out [T, B, O] ([B, O] for *_last losses), final state."""
        self._tokens = inputs if self.input_kind == "tokens" else None
        x = self._input(inputs)
        y, final = self.rnn.forward(x, state)                           # [T, B, H]
        self._steps_batch = y.shape[:2]
        feats = y[-1] if self.last_only else y                          # [B, H] or [T, B, H]
        self._feats = feats
        out = feats @ self.params["head.weight"].T                      # [..., O]
        out += self.params["head.bias"]
        return out, final

    def backward(self, dout: np.ndarray, dfinal: dict | None = None) -> None:
        """Sets ``grads`` from dL/dout of the last training forward (and the final state's adjoint)."""
        feats, W = self._feats, self.params["head.weight"]
        d2 = dout.reshape(-1, self.output_size)
        self.grads = {}
        g_head_w = d2.T @ feats.reshape(-1, feats.shape[-1])            # [O, H]
        g_head_b = d2.sum(axis=0)
        dfeats = (d2 @ W).reshape(feats.shape)
        if self.last_only:
            T, B = self._steps_batch
            dy = np.zeros((T, B, self.rnn.output_size), self.dtype)
            dy[-1] = dfeats
        else:
            dy = dfeats
        dx, _ = self.rnn.backward(dy, dfinal)
        if self.input_kind == "tokens":
            g_embed = np.zeros_like(self.params["embed.weight"])
            np.add.at(g_embed, self._tokens.reshape(-1), dx.reshape(-1, self.embed_size))
            self.grads["embed.weight"] = g_embed
        for name, g in self.rnn.grads.items():
            self.grads["rnn." + name] = g
        self.grads["head.weight"] = g_head_w
        self.grads["head.bias"] = g_head_b

    def loss_value(self, out: np.ndarray, targets) -> tuple[float, np.ndarray]:
        """(loss, dL/dout) for the model's loss."""
        if self.loss.startswith("xent"):
            targets = np.asarray(targets)
            if targets.dtype.kind not in "iu":
                raise TypeError(f"cross-entropy targets must be integer class ids; got dtype {targets.dtype}")
            loss, d = cross_entropy(out.reshape(-1, self.output_size), targets.reshape(-1))
            return loss, d.reshape(out.shape)
        targets = np.asarray(targets, dtype=self.dtype)
        if targets.shape != out.shape:
            raise ValueError(f"mse targets must have the output's shape {out.shape}; got {targets.shape}")
        return mean_squared_error(out, targets)

    def loss_and_grads(self, inputs, targets, state: dict | None = None) -> float:
        """One training forward and backward: returns the loss, sets ``grads``."""
        self.train()
        out, _ = self.forward(inputs, state)
        loss, dout = self.loss_value(out, targets)
        self.backward(dout)
        return loss

    def evaluate(self, inputs, targets, state: dict | None = None) -> float:
        """The loss in inference mode (no dropout, nothing kept for backward)."""
        self.eval()
        try:
            out, _ = self.forward(inputs, state)
            return self.loss_value(out, targets)[0]
        finally:
            self.train()
