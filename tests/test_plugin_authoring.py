"""The plugin author's side: the example out-of-tree plugin, the `seqengine.testing` helper, the guide
(docs/PLUGINS.md) and its catalogue of errors generated from real SpecErrors."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import seqengine as se
from seqengine import functional
from seqengine.compiler.graph import FUNCTIONS
from seqengine.plugins import registry
from seqengine.testing import CellCheckError, cell_test, check_cell

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "plugins" / "seqengine_paper_cells"
GUIDE = ROOT / "docs" / "PLUGINS.md"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def paper_cells(monkeypatch):
    """The example plugin's cells in the registry: from its entry point when it is pip-installed (CI),
    else registered from its source folder for this test and removed afterwards."""
    se.load_plugins()
    if "ugrnn" in se.cells():
        yield se.plugins.registry().owner["ugrnn"]
        return
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("seqengine_paper_cells.cells")
    name = registry().add_plugin(module, "paper_cells")
    yield name
    registry().remove_plugin(name)


# -- the example plugin ---------------------------------------------------------------------------------

def test_example_plugin_declares_its_entry_point():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["seqengine"] == {"paper_cells": "seqengine_paper_cells.cells"}
    assert "seqengine>=0.1" in meta["project"]["dependencies"]
    assert (EXAMPLE / "tests" / "test_cells.py").exists() and (EXAMPLE / "README.md").exists()


def test_example_plugin_registers_nothing_on_import(monkeypatch, fresh_registry):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("seqengine_paper_cells.cells")
    assert fresh_registry.cells == {}
    fresh_registry.add_plugin(module, "paper_cells")
    assert set(fresh_registry.cells) == {"ugrnn", "indrnn"}
    for cell in fresh_registry.cells.values():
        assert "arXiv:" in cell.doc, "a published variant cites its paper"


@pytest.mark.parametrize("cell", ["ugrnn", "indrnn"])
def test_example_cells_pass_check_cell(paper_cells, cell):
    check_cell(cell)


def test_seqengine_check_on_the_example_plugin(paper_cells, capsys):
    from seqengine.cli import main
    assert main(["check", "indrnn"]) == 0
    out = capsys.readouterr().out
    assert "gradient check of cell 'indrnn'" in out and "OK" in out and "u " in out


# -- seqengine.testing ----------------------------------------------------------------------------------

def test_check_cell_passes_a_builtin_and_an_unregistered_cell():
    check_cell("gru_cho")
    check_cell(se.Cell(name="authoring_mgu", state=["h"], equations="""
        f = sigmoid(W_f @ x + U_f @ h_prev + b_f)
        n = tanh(W_n @ x + U_n @ (f * h_prev) + b_n)
        h = (1 - f) * h_prev + f * n
    """))


def test_check_cell_fails_a_wrong_gradient(monkeypatch):
    real = functional.backward

    def wrong(*args, **kwargs):
        dx, dstate0, grads = real(*args, **kwargs)
        return dx, dstate0, {k: (v * 1.01 if k == "b_h" else v) for k, v in grads.items()}

    monkeypatch.setattr(functional, "backward", wrong)
    with pytest.raises(CellCheckError, match=r"cell 'rnn' fails the gradient check:(?s:.*)b_h .*FAIL"):
        check_cell("rnn")


def test_check_cell_fails_an_init_that_overflows():
    cell = se.Cell(name="authoring_hot", state=["h"], equations="h = tanh(U @ h_prev) + exp(W @ x)",
                   init={"W": 200.0})
    with pytest.raises(CellCheckError, match="fails the initialisation check: .*non-finite.*'W': 200.0"):
        check_cell(cell)


def test_check_cell_is_an_assertion_error_and_rejects_a_bad_declaration():
    assert issubclass(CellCheckError, AssertionError)
    with pytest.raises(se.SpecError, match="did you mean `sigmoid`"):
        check_cell(se.Cell(name="authoring_bad", state=["h"], equations="h = sigmod(W @ x)"))
    with pytest.raises(se.UnknownCellError):
        check_cell("no_such_cell")


def test_cell_test_is_one_parametrized_test_per_cell():
    fn = cell_test("rnn", se.Cell(name="authoring_tanh", state=["h"], equations="h = tanh(W @ x + U @ h_prev)"))
    (mark,) = [m for m in fn.pytestmark if m.name == "parametrize"]
    assert mark.args[0] == "cell" and mark.kwargs["ids"] == ["rnn", "authoring_tanh"]
    for cell in mark.args[1]:
        fn(cell)   # what pytest runs for each case
    with pytest.raises(ValueError, match="at least one cell"):
        cell_test()


# -- the guide ------------------------------------------------------------------------------------------

def test_readme_links_the_guide():
    assert "docs/PLUGINS.md" in (ROOT / "README.md").read_text()


def test_guide_documents_every_function():
    text = GUIDE.read_text()
    for fn in FUNCTIONS:
        assert f"| `{fn}(" in text, f"docs/PLUGINS.md: function {fn} is missing from the functions table"


def test_guide_error_catalogue_is_generated_from_real_spec_errors():
    """docs/PLUGINS.md shows exactly what each example raises (regenerate: python scripts/spec_errors.py --write)."""
    spec_errors = load_script("spec_errors")
    assert spec_errors.current(GUIDE.read_text()) == spec_errors.section(), \
        "docs/PLUGINS.md's error catalogue is out of date: run python scripts/spec_errors.py --write"
    titles = [t for t, _ in spec_errors.EXAMPLES]
    assert len(titles) == len(set(titles)) >= 40


def test_every_catalogued_error_points_at_its_line_and_teaches():
    spec_errors = load_script("spec_errors")
    for title, kw in spec_errors.EXAMPLES:
        err = spec_errors.spec_error(kw)
        text = str(err)
        if err.line is not None:   # the offending line is quoted under the message
            quoted = kw["equations"].strip("\n").splitlines()[err.line - 1].strip()
            assert text.splitlines()[1].strip() == quoted, (title, text)
        if err.col is not None:
            assert f"column {err.col + 1}" in text, (title, text)
    # where the fix is obvious, the hint says it
    hints = {t: spec_errors.spec_error(kw).hint for t, kw in spec_errors.EXAMPLES}
    assert hints["a misspelt function"] == "did you mean `sigmoid`?"
    assert "add a line `c = ...`" in hints["a state never assigned"]
    assert "`c = ...` here instead of `cc = ...`" in hints["a state never assigned, with a misspelt assignment"]
    assert "`a * (W @ v)`" in hints["`*` and `@` precedence"]
    assert "`c_prev`" in hints["a state read before it is assigned"]
    assert "did you mean `gate`?" == hints["a free name missing from `params`"]


def test_spec_errors_script_check_mode(capsys):
    assert load_script("spec_errors").main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("equations, state, output", [
    ("h = tanh(W @ x + U @ h_prev)\nc = 1 * h_prev", ["h", "c"], None),        # an explicit copy
    ("c = tanh(W @ x + U @ h_prev)\nh = tanh(V @ (1 * c))", ["h", "c"], None),  # an explicit copy as operand
    ("h = tanh(W @ x + U @ h_prev + p * c_prev)\nc = h_prev", ["h", "c"], None),  # a delay line
    ("h = tanh(W @ x + U @ h_prev + p * c_prev)\nc = h", ["h", "c"], None),       # two states, one value
    ("c = tanh(W @ x + U @ h_prev + p * c_prev)\nh = tanh(V @ c)", ["h", "c"], None),  # a new state as operand
    ("h = tanh(W @ x + U @ h_prev + p * c_prev + q * d_prev)\nc = h_prev\nd = h_prev", ["h", "c", "d"], None),
    ("h = tanh(W @ x + U @ h_prev)\nout = h_prev", ["h"], "out"),                 # a delayed output
    ("h = tanh(U @ (V @ x) + R @ (S @ h_prev) + b)", ["h"], None),                # products of products
    ("a = W @ x\nh = tanh(U @ a)\nc = tanh(c_prev + h)", ["h", "c"], None),       # a named product as operand
    ("h = tanh(W @ b + U @ h_prev)", ["h"], None),                                # a parameter vector as operand
])
def test_states_sharing_a_value_compile_and_are_right(equations, state, output):
    """The parser gives such states, and operands that are products or parameters, a node of their own
    (an internal copy): gradients, float32 and inference all checked against finite differences and each
    other (these once gave wrong gradients or invalid kernels, or were refused)."""
    check_cell(se.Cell(name="authoring_fix", state=state, equations=equations, output=output), steps=3, batch=2)


def test_declarations_the_kernels_cannot_run_are_spec_errors():
    """Each of these compiled before and gave wrong gradients or generated invalid code (found by the fuzzer)."""
    cases = {
        "h = tanh(W @ x)\nc = c_prev": "never updated",
        "h = tanh(W @ x)\nc = 1": "is the constant 1",
        "h = " + "+".join(["b"] * 600) + "\nc = tanh(c_prev)": "levels deep",
    }
    for equations, words in cases.items():
        with pytest.raises(se.SpecError, match=words):
            se.get_cell(se.Cell(name="authoring_bad", state=["h", "c"], equations=equations))
    with pytest.raises(se.SpecError, match="output `q` is the parameter `b`"):
        se.get_cell(se.Cell(name="authoring_bad", state=["h"], equations="h = tanh(W @ x)\nq = b", output="q"))
