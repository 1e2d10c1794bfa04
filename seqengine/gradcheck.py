"""Finite-difference gradient check of a cell (float64): a plugin author's first tool.

For the scalar loss L = sum(y * dy) + sum_s sum(final_s * dfinal_s) with fixed
random dy, dfinal, every analytic gradient (x, initial state, each parameter)
is compared entry by entry with the central difference
(L(theta + eps) - L(theta - eps)) / (2 eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import functional
from .cell import Cell
from .plugins import get_cell


@dataclass
class GradCheckResult:
    cell: str
    errors: dict[str, float]      # "x", "state0.<s>", "<param>" -> worst relative error
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1])

    def report(self) -> str:
        lines = [f"gradient check of cell {self.cell!r} (float64, central differences)",
                 f"{'quantity':<24} worst relative error"]
        for name, err in self.errors.items():
            flag = "" if err <= self.tolerance else "   <-- FAIL"
            lines.append(f"{name:<24} {err:.2e}{flag}")
        lines.append(f"{'OK' if self.ok else 'FAILED'} (tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(1, |a|, |n|) over entries: relative for large values, absolute near zero."""
    scale = np.maximum(1.0, np.maximum(np.abs(analytic), np.abs(numeric)))
    return float(np.max(np.abs(analytic - numeric) / scale)) if analytic.size else 0.0


def check_gradients(cell: str | Cell, input_size: int = 3, hidden_size: int = 4, steps: int = 4, batch: int = 3,
                    seed: int = 0, eps: float = 1e-6, tolerance: float = 1e-6, max_entries: int | None = None
                    ) -> GradCheckResult:
    """Worst relative error of every gradient of `cell` on a small random problem.

    `max_entries` samples that many entries per array (None: every entry).
    """
    cell = get_cell(cell)
    rng = np.random.default_rng(seed)
    params = functional.init_params(cell, input_size, hidden_size, np.float64, rng)
    for name in params:   # larger than the default init, so every nonlinearity leaves its linear range
        params[name] = rng.uniform(-0.8, 0.8, params[name].shape)
    x = rng.standard_normal((steps, batch, input_size))
    state0 = {s: rng.uniform(-0.8, 0.8, (batch, hidden_size)) for s in cell.state}
    dy = rng.standard_normal((steps, batch, hidden_size))
    dfinal = {s: rng.standard_normal((batch, hidden_size)) for s in cell.state}

    def loss() -> float:
        y, final, _ = functional.forward(cell, params, x, state0, training=False)
        return float(np.sum(y * dy) + sum(np.sum(final[s] * dfinal[s]) for s in cell.state))

    _, _, tape = functional.forward(cell, params, x, state0, training=True)
    dx, dstate0, grads = functional.backward(cell, params, tape, dy, dfinal)

    targets = {"x": (x, dx)}
    targets.update({f"state0.{s}": (state0[s], dstate0[s]) for s in cell.state})
    targets.update({name: (params[name], grads[name]) for name in params})
    errors = {}
    for name, (array, analytic) in targets.items():
        idx = np.arange(array.size)
        if max_entries is not None and array.size > max_entries:
            idx = rng.choice(array.size, max_entries, replace=False)
        numeric = central_differences(array, loss, eps, idx)
        errors[name] = relative_error(analytic.reshape(-1)[idx], numeric)
    return GradCheckResult(cell.name, errors, tolerance)


def central_differences(array: np.ndarray, loss, eps: float = 1e-6, entries=None) -> np.ndarray:
    """(loss(a + eps e_i) - loss(a - eps e_i)) / (2 eps) for each flat index i in `entries` (default: all).

    `array` is perturbed in place (it must be the array `loss` reads) and restored exactly.
    """
    flat = array.reshape(-1)
    entries = np.arange(flat.size) if entries is None else entries
    numeric = np.empty(len(entries))
    for k, i in enumerate(entries):
        keep = flat[i]
        flat[i] = keep + eps
        up = loss()
        flat[i] = keep - eps
        down = loss()
        flat[i] = keep
        numeric[k] = (up - down) / (2 * eps)
    return numeric
