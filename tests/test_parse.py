"""Every malformed cell declaration raises `seqengine.SpecError` naming the cell, the line
(where there is one) and the offending symbol; valid declarations are never evaluated."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

import seqengine as se
from seqengine.compiler.parse import parse_cell


def spec_error(equations, state=("h",), **kw) -> se.SpecError:
    with pytest.raises(se.SpecError) as info:
        parse_cell(se.Cell(name=kw.pop("name", "badcell"), state=list(state), equations=equations, **kw))
    return info.value


def check(err: se.SpecError, *, line, symbol, words, source=None, hint=None, col=None):
    """The message names the cell, the line, the symbol and says what is wrong."""
    text = str(err)
    assert isinstance(err, ValueError)   # SpecError is a ValueError
    assert err.cell == "badcell" and "cell 'badcell'" in text, text
    assert err.line == line, (err.line, text)
    if line is not None:
        assert f"line {line}" in text, text
    assert err.symbol == symbol, (err.symbol, text)
    assert symbol in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    if source is not None:   # the offending equation is quoted
        assert source.strip() in text.splitlines()[1], text
    if col is not None:      # 1-based column of the symbol in that line
        assert f"column {col}" in text, text
    if hint is not None:
        assert err.hint is not None and hint in err.hint and "hint:" in text, text


def col_of(line_text, symbol):
    return line_text.index(symbol) + 1


# -- the cases named in the issue ----------------------------------------------------------

def test_syntax_error():
    src = "a = sigmoid(W @ x)\nh = tanh(U @ h_prev +)"
    err = spec_error(src)
    check(err, line=2, symbol="h = tanh(U @ h_prev +)", words=["syntax error"])


def test_unknown_function_with_did_you_mean():
    src = "a = sigmoid(W @ x)\nh = tanhh(U @ h_prev) * a"
    err = spec_error(src)
    check(err, line=2, symbol="tanhh", words=["unknown function `tanhh`"], source=src.splitlines()[1],
          hint="did you mean `tanh`?", col=col_of(src.splitlines()[1], "tanhh"))


def test_unknown_function_without_a_close_match_lists_the_functions():
    err = spec_error("h = frobnicate(W @ x)")
    check(err, line=1, symbol="frobnicate", words=["unknown function `frobnicate`"], hint="sigmoid, tanh")


def test_use_before_assignment():
    src = "a = tanh(W @ x + b)\nh = a * later\nlater = sigmoid(U @ h_prev)"
    err = spec_error(src)
    check(err, line=2, symbol="later", words=["used before it is assigned", "on line 3"],
          source="h = a * later", hint="move its line up", col=col_of("h = a * later", "later"))


def test_state_used_before_assignment_when_never_assigned_points_at_prev():
    err = spec_error("h = tanh(W @ x + c)\nd = sigmoid(U @ h_prev)", state=("h", "c"))
    check(err, line=1, symbol="c", words=["state `c` is used before it is assigned"], hint="`c_prev`")


def test_state_never_assigned():
    err = spec_error("h = tanh(W @ x + U @ h_prev + p * c_prev)", state=("h", "c"))
    check(err, line=None, symbol="c", words=["state `c` is never assigned"], hint="c = ...")


def test_state_assigned_twice():
    src = "h = tanh(W @ x)\nh = sigmoid(U @ h_prev)"
    err = spec_error(src)
    check(err, line=2, symbol="h", words=["state `h` is assigned twice", "first on line 1"],
          source="h = sigmoid(U @ h_prev)", col=1)


def test_intermediate_assigned_twice():
    err = spec_error("a = tanh(W @ x)\na = sigmoid(U @ h_prev)\nh = a")
    check(err, line=2, symbol="a", words=["name `a` is assigned twice", "first on line 1"])


@pytest.mark.parametrize("expr", ["tanh(x)", "x * 2", "-x", "W @ (x * x)", "x / 2"])
def test_x_used_outside_matmul(expr):
    src = f"h = {expr}"
    err = spec_error(src)
    check(err, line=1, symbol="x", words=["`x` is used outside `@`"], source=src, hint="W @ x")


@pytest.mark.parametrize("expr", ["x + h_prev", "h_prev * x", "maximum(x, b)", "x * b"])
def test_size_d_vector_meets_size_h(expr):
    src = f"h = tanh({expr})"
    err = spec_error(src)
    check(err, line=1, symbol="x", words=["size D", "size H", "elementwise"], source=src, hint="W @ x")


def test_cycle():
    src = "a = tanh(W @ x + b)\nh = a * q\nq = sigmoid(U @ h)"
    err = spec_error(src)
    check(err, line=2, symbol="q", words=["cycle", "h -> q -> h"], source="h = a * q")


def test_longer_cycle_is_spelled_out():
    src = "h = tanh(W @ x) * p\np = sigmoid(r)\nr = 2 * h"
    err = spec_error(src)
    check(err, line=1, symbol="p", words=["cycle", "h -> p -> r -> h"])


def test_name_in_params_never_used():
    err = spec_error("h = tanh(W @ x + b)", params=["W", "b", "b_extra"])
    check(err, line=None, symbol="b_extra", words=["parameter `b_extra`", "listed in params", "never used"])


def test_name_in_init_never_used():
    err = spec_error("h = tanh(W @ x + b_h)", init={"b_hh": 1.0})
    check(err, line=None, symbol="b_hh", words=["init names `b_hh`", "never use"], hint="did you mean `b_h`?")


def test_free_name_missing_from_params():
    src = "h = tanh(W @ x + U @ h_prev + bais)"
    err = spec_error(src, params=["W", "U", "bias"])
    # `bias` listed but unused is reported first only if it is checked first: either names the typo
    assert err.symbol in {"bias", "bais"}
    err = spec_error(src, params=["W", "U"])
    check(err, line=1, symbol="bais", words=["`bais` is not in params", "not assigned"], source=src,
          col=col_of(src, "bais"), hint="add `bais` to params")


def test_free_name_missing_from_params_suggests_a_close_name():
    src = "gate = sigmoid(W @ x)\nh = tanh(U @ h_prev) * gat"
    err = spec_error(src, params=["W", "U"])
    check(err, line=2, symbol="gat", words=["`gat` is not in params"], hint="did you mean `gate`?")


# -- the other cases parse.py rejects ------------------------------------------------------

@pytest.mark.parametrize("expr, symbol, hint", [
    ("(W + V) @ x", "W + V", None),
    ("a * W @ x", "a * W", "bind equally tightly"),
])
def test_left_of_matmul_not_a_matrix_name(expr, symbol, hint):
    err = spec_error(f"h = tanh({expr})")
    check(err, line=1, symbol=symbol, words=["left operand of `@` must be a parameter matrix name"], hint=hint)


@pytest.mark.parametrize("src, symbol", [
    ("a = tanh(W @ x)\nh = a @ h_prev", "a"),
    ("h = h_prev @ x", "h_prev"),
    ("h = tanh(x @ W)", "x"),
])
def test_value_left_of_matmul(src, symbol):
    err = spec_error(src)
    check(err, line=len(src.splitlines()), symbol=symbol,
          words=[f"`{symbol}` is a value, not a parameter matrix"])


def test_matrix_used_as_vector():
    src = "h = tanh(W @ x + W)"
    err = spec_error(src)
    check(err, line=1, symbol="W", words=["parameter `W`", "both as a matrix", "and as a vector"],
          col=col_of(src, "+ W") + 2)


def test_one_matrix_two_operand_sizes():
    err = spec_error("h = tanh(W @ x + W @ h_prev)")
    check(err, line=1, symbol="W", words=["matrix `W` multiplies vectors of sizes D and H"],
          hint="use two matrices")


def test_matmul_with_a_constant():
    err = spec_error("h = tanh(W @ 2)")
    assert err.line == 1 and err.col == len("h = tanh(W @ ") and "right operand of `@` must be a vector" in str(err) and "W @ 2" in str(err)


@pytest.mark.parametrize("op", ["**", "%", "//", "&", "|", "^", "<<", ">>"])
def test_unsupported_operator(op):
    err = spec_error(f"h = tanh(W @ x) {op} b")
    check(err, line=1, symbol=op, words=[f"operator `{op}` is not supported", "+ - * / @"])


def test_power_operator_hints_at_exp_log():
    err = spec_error("h = tanh(W @ x) ** 2")
    check(err, line=1, symbol="**", words=["not supported"], hint="exp(b * log(a))")


def test_unsupported_unary_operator():
    err = spec_error("h = tanh(W @ x) * ~b")
    assert err.line == 1 and "unary operator" in str(err) and "not supported" in str(err)
    assert "~b" in str(err)   # the offending line is quoted


@pytest.mark.parametrize("value", ["'a'", "True", "None", "1j"])
def test_constant_that_is_not_a_real_number(value):
    err = spec_error(f"h = tanh(W @ x) * {value}")
    check(err, line=1, symbol=value, words=[f"constant {value} is not a real number"])


@pytest.mark.parametrize("src, node", [
    ("h += tanh(W @ x)", "AugAssign"),
    ("h = a = tanh(W @ x)", "Assign"),
    ("h, c = tanh(W @ x), b", "Assign"),
    ("tanh(W @ x)\nh = tanh(W @ x)", "Expr"),
    ("import os\nh = tanh(W @ x)", "Import"),
    ("def f(): pass\nh = tanh(W @ x)", "FunctionDef"),
])
def test_line_that_is_not_one_assignment(src, node):
    err = spec_error(src)
    text = str(err)
    assert err.cell == "badcell" and err.line == 1 and err.symbol == node
    assert text.startswith("cell 'badcell', line 1, column 1: each line must be one assignment `name = expression`")
    assert text.splitlines()[1].strip() == src.splitlines()[0]   # the offending line is quoted


@pytest.mark.parametrize("src, name", [
    ("h_prev = tanh(W @ x)\nh = h_prev", "h_prev"),
    ("x = tanh(W @ h_prev)\nh = x", "x"),
])
def test_assigning_a_step_input(src, name):
    err = spec_error(src)
    check(err, line=1, symbol=name, words=[f"`{name}` is an input of the step and cannot be assigned"])


@pytest.mark.parametrize("expr, node", [
    ("os.path", "Attribute"), ("b[0]", "Subscript"), ("(W @ x > 0)", "Compare"),
    ("(b if b else b)", "IfExp"), ("[b]", "List"),
])
def test_expressions_outside_the_language(expr, node):
    err = spec_error(f"h = tanh(W @ x) * {expr}")
    check(err, line=1, symbol=node, words=[f"`{node}` expressions are not part of the equation language"])


def test_function_used_as_value():
    err = spec_error("h = tanh(W @ x) * sigmoid")
    check(err, line=1, symbol="sigmoid", words=["function `sigmoid` is used as a value"], hint="sigmoid(...)")


@pytest.mark.parametrize("call, fn, n", [("tanh(W @ x, b)", "tanh", 1), ("tanh(W @ x, out=b)", "tanh", 1),
                                         ("maximum(b)", "maximum", 2)])
def test_function_with_wrong_arguments(call, fn, n):
    err = spec_error(f"h = {call}")
    check(err, line=1, symbol=fn, words=[f"`{fn}` takes {n} positional argument(s)"])


def test_method_call_is_not_a_function_of_the_language():
    err = spec_error("h = np.tanh(W @ x)")
    check(err, line=1, symbol="np.tanh", words=["only the functions of the language can be called"])


def test_constant_only_division():
    err = spec_error("h = tanh(W @ x) * (1 / 2)")
    check(err, line=1, symbol="div", words=["of constants only: write the number"])


def test_constants_are_folded():
    """+ - * of constants fold to one constant node (and a folded value is used correctly)."""
    from seqengine import functional
    g = parse_cell(se.Cell(name="fold", state=["h"], equations="h = (2 * 3 - 1 + -1) * tanh(W @ x)"))
    consts = [n for n in g.nodes if n.op == "const"]
    assert 4.0 in [n.attr for n in consts]
    cell = se.Cell(name="fold", state=["h"], equations="h = (2 * 3 - 1 + -1) * tanh(W @ x)")
    params = {"W": np.array([[0.5, 0.25]])}
    x = np.array([[[1.0, 2.0]]])
    y, _, _ = functional.forward(cell, params, x, {"h": np.zeros((1, 1))}, training=False)
    assert y.shape == (1, 1, 1) and y[0, 0, 0] == pytest.approx(4 * np.tanh(0.5 * 1.0 + 0.25 * 2.0), rel=1e-12)


def test_empty_equations():
    err = spec_error("   \n\n")
    assert str(err) == "cell 'badcell': the equations are empty"


def test_output_that_does_not_exist():
    err = spec_error("h = tanh(W @ x)\nq = 2 * h", output="qq")
    check(err, line=None, symbol="qq", words=["output `qq` is neither a state nor an assigned value"],
          hint="did you mean `q`?")


@pytest.mark.parametrize("state, words", [
    (["x"], "state name `x` is reserved"),
    (["h_prev"], "state name `h_prev` is reserved"),
    (["h", "h"], "a state is declared twice"),
    (["1h"], "state name '1h' is not an identifier"),
])
def test_bad_state_names(state, words):
    with pytest.raises(se.SpecError, match="cell 'badcell'") as info:
        parse_cell(se.Cell(name="badcell", state=state, equations="h = tanh(W @ x)"))
    assert words in str(info.value)


def test_bad_cell_object_arguments():
    with pytest.raises(se.SpecError, match="cell name must be a Python identifier") as info:
        se.Cell(name="my cell", state=["h"], equations="h = tanh(W @ x)")
    assert "'my cell'" in str(info.value)
    with pytest.raises(se.SpecError, match="cell 'c0': a cell needs at least one state"):
        se.Cell(name="c0", state=[], equations="h = tanh(W @ x)")
    with pytest.raises(se.SpecError, match="cell 'c1': equations must be a string"):
        se.Cell(name="c1", state=["h"], equations=["h = tanh(W @ x)"])


def test_line_numbers_count_in_the_dedented_declaration():
    err = spec_error("""
        a = sigmoid(W @ x)

        h = tanh(U @ h_prev) * a ** 2
    """)
    check(err, line=3, symbol="**", words=["not supported"], source="h = tanh(U @ h_prev) * a ** 2")


def test_get_cell_validates_an_unregistered_cell():
    with pytest.raises(se.SpecError, match="unknown function `sigmod`"):
        se.get_cell(se.Cell(name="badcell", state=["h"], equations="h = sigmod(W @ x)"))
    with pytest.raises(se.SpecError, match="unknown function `sigmod`"):
        se.RNN(se.Cell(name="badcell", state=["h"], equations="h = sigmod(W @ x)"), 2, 3)


# -- the declaration is parsed, never evaluated --------------------------------------------

def test_code_in_a_declaration_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for src in [f"h = tanh(W @ x) * __import__('os').system('touch {marker}')",
                f"h = __import__('pathlib').Path('{marker}').touch()",
                f"h = tanh(W @ x) * open('{marker}', 'w')"]:
        with pytest.raises(se.SpecError) as info:
            parse_cell(se.Cell(name="badcell", state=["h"], equations=src))
        assert "cell 'badcell', line 1" in str(info.value)
        assert not marker.exists()


def test_a_valid_declaration_is_parsed_without_eval_or_exec(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the declaration was evaluated")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    g = parse_cell(se.get_cell("lstm"))
    assert g.params[:4] == ["W_i", "b_ii", "U_i", "b_hi"]   # first-use order
    assert set(g.matrices) == {f"{m}_{k}" for m in "WU" for k in "ifgo"}
    assert all(g.matrices[f"W_{k}"] == "D" and g.matrices[f"U_{k}"] == "H" for k in "ifgo")


def test_parse_of_valid_cell_shapes():
    from seqengine import functional
    cell = se.Cell(name="ok", state=["h"], params=["W", "U", "b"], init={"b": 0.5},
                   equations="h = tanh(W @ x + U @ h_prev + b)")
    assert functional.param_shapes(cell, 3, 4) == {"W": (4, 3), "U": (4, 4), "b": (4,)}
    params = functional.init_params(cell, 3, 4, np.float64, np.random.default_rng(0))
    np.testing.assert_array_equal(params["b"], np.full(4, 0.5))
