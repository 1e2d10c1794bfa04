"""Optimizers over {name: array} parameters (updated in place), gradient clipping, learning-rate schedules.

    opt = Adam(model.params, lr=2e-3)
    norm = clip_grad_norm(model.grads, 1.0)          # scales grads in place; returns the norm before clipping
    opt.step(model.grads, lr=lr_at(step, 2e-3, "cosine", total=1000, warmup=50))

Update rules are PyTorch's (torch.optim.SGD with momentum and dampening 0, torch.optim.Adam,
torch.nn.utils.clip_grad_norm_); the tests compare them step by step. `state_dict()` returns
(scalars, arrays) so a checkpoint can hold both exactly.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "cosine", "linear")


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry (accumulated in float64)."""
    return math.sqrt(sum(float(np.dot(g.ravel().astype(np.float64, copy=False), g.ravel())) for g in grads.values()))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most `max_norm` (<= 0: no clipping).

    Returns the norm before clipping (NaN or inf if a gradient is not finite; then nothing is scaled).
    """
    norm = global_norm(grads)
    if max_norm and max_norm > 0 and math.isfinite(norm):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads.values():
                g *= g.dtype.type(coef)
    return norm


def lr_at(step: int, base_lr: float, schedule: str = "constant", *, total: int = 1, warmup: int = 0,
          min_ratio: float = 0.1) -> float:
    """Learning rate of (0-based) `step`: a linear warmup over `warmup` steps from base_lr/warmup, then
    constant, cosine or linear decay from base_lr to base_lr*min_ratio at step `total`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return base_lr * (min_ratio + (1.0 - min_ratio) * shape)


class Optimizer:
    name = "optimizer"
    slots: tuple[str, ...] = ()

    def __init__(self, params: dict[str, np.ndarray], lr: float):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive; got {lr!r}")
        self.params = params
        self.lr = float(lr)
        self.steps = 0
        self.state = {slot: {k: np.zeros_like(p) for k, p in params.items()} for slot in self.slots}

    def hyperparameters(self) -> dict:
        return {"lr": self.lr}

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(scalars, {"<slot>/<param name>": array})."""
        arrays = {f"{slot}/{k}": a for slot, d in self.state.items() for k, a in d.items()}
        return {"name": self.name, "steps": self.steps, **self.hyperparameters()}, arrays

    def load_state_dict(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        if scalars.get("name") != self.name:
            raise ValueError(f"optimizer state is for {scalars.get('name')!r}, not {self.name!r}")
        self.steps = int(scalars["steps"])
        for slot, d in self.state.items():
            for k in d:
                a = arrays[f"{slot}/{k}"]
                if a.shape != d[k].shape:
                    raise ValueError(f"optimizer state {slot}/{k} has shape {a.shape}, expected {d[k].shape}")
                d[k] = np.array(a, dtype=d[k].dtype, copy=True)

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: buf = momentum*buf + g (buf = g on the first step); p -= lr * buf (or g + momentum*buf
    with nesterov)."""
    name = "sgd"

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False):
        self.slots = ("momentum",) if momentum else ()
        super().__init__(params, lr)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def step(self, grads, lr=None):
        lr = self.lr if lr is None else lr
        for k, p in self.params.items():
            g = grads[k]
            if self.momentum:
                buf = self.state["momentum"][k]
                if self.steps == 0:
                    buf[...] = g
                else:
                    buf *= buf.dtype.type(self.momentum)
                    buf += g
                g = g + buf.dtype.type(self.momentum) * buf if self.nesterov else buf
            p -= p.dtype.type(lr) * g
        self.steps += 1


class Adam(Optimizer):
    """torch.optim.Adam: m, v moving averages; p -= lr * m_hat / (sqrt(v_hat) + eps)."""
    name = "adam"
    slots = ("m", "v")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def step(self, grads, lr=None):
        lr = self.lr if lr is None else lr
        self.steps += 1
        t = self.steps
        corr1 = 1.0 - self.beta1 ** t
        corr2_sqrt = math.sqrt(1.0 - self.beta2 ** t)
        for k, p in self.params.items():
            g, m, v = grads[k], self.state["m"][k], self.state["v"][k]
            f = p.dtype.type
            m *= f(self.beta1)
            m += f(1.0 - self.beta1) * g
            v *= f(self.beta2)
            v += f(1.0 - self.beta2) * (g * g)
            denom = np.sqrt(v)
            denom /= f(corr2_sqrt)
            denom += f(self.eps)
            p -= f(lr / corr1) * m / denom


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9) -> Optimizer:
    if name == "adam":
        return Adam(params, lr)
    if name == "sgd":
        return SGD(params, lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {name!r}")
