"""The declaration of a recurrent cell, and the error a bad one raises.

A cell is a handful of gate equations in the notation of the papers::

    i = sigmoid(W_i @ x + U_i @ h_prev + b_i)
    ...
    h = o * tanh(c)

`Cell` only holds the declaration; `seqengine.compiler.parse` turns it into an
expression graph (and raises `SpecError` when it is malformed).
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

InitValue = Union[float, int, Callable[..., Any]]


class SpecError(ValueError):
    """A cell declaration that cannot be compiled.

    The message names the cell, the equation line (1-based, counted in the
    dedented `equations` text) and column, and the offending symbol.
    """

    def __init__(self, cell: str, message: str, line: int | None = None,
                 col: int | None = None, symbol: str | None = None,
                 source_line: str | None = None, hint: str | None = None):
        self.cell, self.line, self.col, self.symbol, self.hint = cell, line, col, symbol, hint
        self.reason = message
        where = f"cell {cell!r}"
        if line is not None:
            where += f", line {line}"
            if col is not None:
                where += f", column {col + 1}"
        text = f"{where}: {message}"
        if source_line is not None:
            text += f"\n    {source_line.strip()}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


@dataclass(frozen=True)
class Cell:
    """A recurrent cell declared as gate equations.

    name:      registry name (``"lstm"``).
    state:     state names, e.g. ``["h", "c"]``; ``<s>_prev`` is the previous value.
    equations: one assignment per line (see the README for the language).
    output:    the value the layer emits per step (default: the first state).
    init:      parameter name -> constant, or callable ``(shape, rng) -> array``.
    params:    when given, the complete list of parameter names (typo guard).
    doc:       free text shown by ``seqengine cells``.
    """

    name: str
    state: Sequence[str]
    equations: str
    output: str | None = None
    init: Mapping[str, InitValue] = field(default_factory=dict)
    params: Sequence[str] | None = None
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise SpecError(str(self.name), "the cell name must be a Python identifier such as 'my_lstm'")
        if isinstance(self.state, str):
            object.__setattr__(self, "state", [self.state])
        object.__setattr__(self, "state", tuple(self.state))
        if not self.state:
            raise SpecError(self.name, "a cell needs at least one state (state=['h'])")
        if not isinstance(self.equations, str):
            raise SpecError(self.name, "equations must be a string of assignments")
        object.__setattr__(self, "equations", textwrap.dedent(self.equations).strip("\n"))
        object.__setattr__(self, "init", dict(self.init or {}))
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))

    @property
    def output_name(self) -> str:
        return self.output or self.state[0]

    def equations_hash(self) -> str:
        """SHA-256 of everything that changes the math of the cell (not its doc)."""
        cached = self.__dict__.get("_equations_hash")
        if cached is not None:   # the fields are frozen: compute once (looked up on every kernel call)
            return cached
        payload = json.dumps({
            "state": list(self.state),
            "equations": [ln.strip() for ln in self.equations.splitlines() if ln.strip()],
            "output": self.output_name,
        }, sort_keys=True)
        self.__dict__["_equations_hash"] = hashlib.sha256(payload.encode()).hexdigest()
        return self.__dict__["_equations_hash"]
