"""Property-based tests of the compiler (hypothesis).

1. Random text, random token soup and random mutations of valid declarations only ever raise
   `SpecError` (with a line inside the declaration), never another exception, never a hang: each example
   goes through the whole front end, parse -> schedule -> emit (both dtypes) -> Python's `compile` of the
   generated kernel source (everything but Numba's own compilation).
2. Random *valid* cells drawn from a grammar (several states, gates with random nonlinearities,
   products of intermediates, products of intermediates with matrices, peepholes, an output other than
   a state) pass `seqengine.testing.check_cell`: the float64 finite-difference check of every gradient,
   float32 against float64, inference against training, variable lengths, the default init.

The grammar keeps values well-behaved so that finite differences mean something: `log(1 + sigmoid(.))`,
`exp(tanh(.))`, `sqrt(1 + sigmoid(.))`, division by `1 + softplus(.)`, convex mixes of states. Kinks
(`relu`, `abs`, `maximum`, `minimum`) are checked at random points, where a tie is improbable.

CI's share is fixed: a fixed number of examples, derandomized (the same examples on every run), no
example database. `scripts/fuzz_compiler.py` runs the same properties longer with a random seed
(SEQENGINE_FUZZ_SCALE multiplies the example counts; derandomize is then off).
"""

from __future__ import annotations

import os
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import seqengine as se  # noqa: E402
from seqengine.backends.cpu.emit import emit_module  # noqa: E402
from seqengine.compiler.graph import FUNCTIONS  # noqa: E402
from seqengine.compiler.parse import parse_cell  # noqa: E402
from seqengine.compiler.schedule import schedule  # noqa: E402
from seqengine.testing import check_cell  # noqa: E402

SCALE = int(os.environ.get("SEQENGINE_FUZZ_SCALE", "1"))
LONG = SCALE > 1


def fuzz_settings(examples: int):
    return settings(max_examples=examples * SCALE, derandomize=not LONG, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


# -- 1: the front end raises SpecError or compiles ------------------------------------------------------

SECONDS_PER_EXAMPLE = 5.0   # "never a hang": the front end takes milliseconds; 5 s is a generous bound

TOKENS = (["h", "c", "m", "x", "h_prev", "c_prev", "m_prev", "W", "U", "V", "b", "a", "g", "p", "hh",
           "=", "@", "+", "-", "*", "/", "(", ")", ",", "\n", " ", "  ", "\t", "0", "1", "0.5", "2", "1e400",
           "1e-300", "**", "%", "~", "sigmod", "tanhh", "lambda", ":", "[", "]", ".", "if", "else", "'s'",
           "#", ";", "True", "None", "import", "os", "__import__", "==", "<", "not", "1j", "...", "\\"]
          + list(FUNCTIONS))

VALID = [c.equations for c in se.cells().values()] + [
    "f = sigmoid(W_f @ x + U_f @ h_prev + b_f)\nn = tanh(W_n @ x + U_n @ (f * h_prev) + b_n)\nh = (1 - f) * h_prev + f * n",
    "h = relu(W @ x + u * h_prev + b)",
    "a = tanh(W @ x + U @ h_prev)\nl = log(1 + sigmoid(a))\nh = maximum(a, l) / (1 + softplus(b))",
]


def front_end(**kw) -> str:
    """'ok' if the declaration compiles to kernel source, 'spec' if it raises a well-formed SpecError."""
    start = time.perf_counter()
    try:
        cell = se.Cell(**kw)
        sched = schedule(parse_cell(cell))
        for dtype in ("float32", "float64"):
            source, _ = emit_module(sched, dtype)
            compile(source, "<generated kernels>", "exec")
        outcome = "ok"
    except se.SpecError as e:
        text, lines = str(e), str(kw.get("equations", "")).count("\n") + 1
        assert text.startswith(f"cell {e.cell!r}"), text
        assert e.reason and e.reason in text, text
        if e.line is not None:
            assert f"line {e.line}" in text and 1 <= e.line <= lines + 1, (e.line, lines, text)
        if e.col is not None:
            assert e.line is not None and e.col >= 0, text
        outcome = "spec"
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_EXAMPLE, f"the front end took {elapsed:.1f} s on {kw!r}"
    return outcome


names = st.sampled_from(["h", "c", "m", "x", "h_prev", "a", "hh", "1h", "", "W"])
states = st.one_of(st.just(["h"]), st.just(["h", "c"]), st.lists(names, min_size=0, max_size=3))


@fuzz_settings(150)
@given(text=st.one_of(st.text(max_size=120), st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
                      st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join)),
       state=states)
def test_random_text_raises_only_spec_error(text, state):
    front_end(name="fuzzed", state=state, equations=text)


@st.composite
def mutated(draw):
    """A valid declaration with a few random edits (characters, tokens, whole lines) and random extras."""
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "swap", "duplicate", "drop"]))
        lines = text.splitlines() or [""]
        if kind in ("delete", "insert", "replace"):
            i = draw(st.integers(0, len(text)))
            j = min(len(text), i + draw(st.integers(0, 6)))
            new = "" if kind == "delete" else draw(st.one_of(st.sampled_from(TOKENS), st.characters()))
            text = text[:i] + new + text[j if kind != "insert" else i:]
        elif kind == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif kind == "duplicate":
            i = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
        elif kind == "drop":
            i = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:i] + lines[i + 1:])
    used = sorted({t for t in text.replace("(", " ").replace(")", " ").split() if t.isidentifier()})
    extras = {}
    if draw(st.booleans()):
        extras["output"] = draw(st.one_of(st.none(), names, st.sampled_from(used or ["h"])))
    if draw(st.booleans()):
        extras["params"] = draw(st.lists(st.sampled_from(used + ["b_extra"]), max_size=8, unique=True))
    if draw(st.booleans()):
        extras["init"] = {k: 0.5 for k in draw(st.lists(st.sampled_from(used + ["b_extra"]), max_size=3))}
    state = draw(st.one_of(st.just(["h", "c"] if "c_prev" in text else ["h"]), states))
    return dict(name="fuzzed", state=state, equations=text, **extras)


@fuzz_settings(250)
@given(kw=mutated())
def test_mutated_declarations_raise_only_spec_error(kw):
    front_end(**kw)


def test_the_unmutated_declarations_compile():
    for text in VALID:
        assert front_end(name="fuzzed", state=["h", "c"] if "c_prev" in text else ["h"], equations=text) == "ok"


# -- 2: random valid cells pass the gradient check and float32 == float64 -------------------------------

ACTIVATIONS = [   # each bounded, smooth or with its kink away from where values pile up
    "sigmoid({})", "tanh({})", "exp(tanh({}))", "log(1 + sigmoid({}))", "sqrt(1 + sigmoid({}))",
    "softplus({}) / 4", "tanh({}) / (1 + softplus({}))", "relu(tanh({}))", "abs(tanh({}))",
    "maximum(tanh({}), 0.25)", "minimum(sigmoid({}), 0.75)", "-tanh({})",
]


@st.composite
def valid_cells(draw):
    """A random cell from a small grammar: gates of x, previous states and earlier gates, then states."""
    state_names = ["h", "c", "m"][:draw(st.integers(1, 3))]
    lines, gates = [], []
    for k in range(draw(st.integers(1, 3))):
        g = f"g{k}"
        terms = [f"W_{g} @ x"] if draw(st.booleans()) or not state_names else []
        for s in state_names:
            how = draw(st.sampled_from(["matrix", "peephole", "none"]))
            if how == "matrix":
                terms.append(f"U_{g}{s} @ {s}_prev")
            elif how == "peephole":
                terms.append(f"p_{g}{s} * {s}_prev")
        if gates and draw(st.booleans()):   # a product of an intermediate: the step runs in two segments
            terms.append(f"V_{g} @ ({draw(st.sampled_from(gates))} * {draw(st.sampled_from(state_names))}_prev)")
        if draw(st.booleans()):
            terms.append(f"b_{g}")
        if not terms:
            terms = [f"W_{g} @ x"]
        act = draw(st.sampled_from(ACTIVATIONS))
        pre = " + ".join(terms)
        lines.append(f"{g} = {act.format(pre, f'd_{g}')}")
        gates.append(g)
    if len(gates) > 1 and draw(st.booleans()):   # a product of intermediates, named
        a, b = draw(st.sampled_from(gates)), draw(st.sampled_from(gates))
        lines.append(f"q = {a} * {b}")
        gates.append("q")
    assigned = []
    for s in state_names:
        a, b = draw(st.sampled_from(gates)), draw(st.sampled_from(gates))
        forms = [f"{a} * {s}_prev + (1 - {a}) * {b}", f"tanh({a} * {b} + {s}_prev / 2)",
                 f"{a} * {s}_prev + {b}", f"({a} - {b}) / (1 + softplus({s}_prev)) + {s}_prev / 2",
                 f"tanh(Z_{s} @ ({a} * {s}_prev) + {b})"]
        if assigned:
            t = draw(st.sampled_from(assigned))
            forms.append(f"{a} * tanh({t}) + {s}_prev / 4")
        lines.append(f"{s} = {draw(st.sampled_from(forms))}")
        assigned.append(s)
    output = None
    if draw(st.booleans()):
        lines.append(f"y = {draw(st.sampled_from(gates))} * tanh({draw(st.sampled_from(assigned))})")
        output = "y"
    return se.Cell(name="fuzzcell", state=state_names, equations="\n".join(lines), output=output)


@fuzz_settings(6)
@given(cell=valid_cells())
def test_random_valid_cells_pass_check_cell(cell):
    check_cell(cell, input_size=2, hidden_size=3, steps=3, batch=2)
