"""Text generation from a character model.

    text = sample(model, vocab, prime="ROMEO:", length=300, temperature=0.8, seed=0)

The prime runs through the stack in one `forward`; then each character is drawn from
softmax(logits / temperature) and fed back through `RNN.step` (inference mode).
"""

from __future__ import annotations

import numpy as np

from .model import SequenceModel
from .tasks import Vocabulary


def sample(model: SequenceModel, vocab: Vocabulary, prime: str = "\n", length: int = 300,
           temperature: float = 1.0, seed: int | None = None) -> str:
    """`prime` followed by `length` generated characters."""
    if not isinstance(prime, str) or not prime:
        raise ValueError("the prime must be a non-empty string (it starts the model's state), e.g. --prime 'ROMEO:'")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}")
    if length < 0:
        raise ValueError(f"length must be >= 0; got {length!r}")
    if model.input_kind != "tokens" or model.loss != "xent" or model.input_size != len(vocab):
        raise ValueError("sampling needs a character model (token input, cross-entropy on every step)")
    ids = vocab.encode(prime)                       # ValueError naming characters outside the vocabulary
    rng = np.random.default_rng(seed)
    model.eval()
    try:
        embed, W, b = model.params["embed.weight"], model.params["head.weight"], model.params["head.bias"]
        y, state = model.rnn.forward(embed[ids][:, None, :])         # [T, 1, H]
        h = y[-1]                                                       # [1, H]
        out = []
        for _ in range(length):
            logits = (h @ W.T + b)[0].astype(np.float64) / temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
            nxt = int(rng.choice(len(p), p=p))
            out.append(nxt)
            h, state = model.rnn.step(embed[nxt][None, :], state)
    finally:
        model.train()
    return prime + vocab.decode(out)
