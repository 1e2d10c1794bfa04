"""The `seqengine` command line, called in-process through `seqengine.cli.main`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import seqengine as se
from seqengine import functional
from seqengine.cli import main
from seqengine.gradcheck import check_gradients


def test_cells_lists_every_registered_cell(capsys):
    assert main(["cells", "--input-size", "3", "--hidden-size", "5"]) == 0
    out = capsys.readouterr().out
    known = se.cells()
    listed = re.findall(r"^(\w+)  \(plugin (\w+); state (\[.*?\]), output (\w+)\)$", out, re.M)
    assert [name for name, *_ in listed] == sorted(known)
    for name, plugin, state, output in listed:
        cell = known[name]
        assert plugin == se.plugins.registry().owner[name]
        assert state == str(list(cell.state)) and output == cell.output_name
        for line in cell.equations.splitlines():
            assert f"    {line}" in out
        shapes = functional.param_shapes(cell, 3, 5)
        assert "  parameters (D=3, H=5): " + ", ".join(f"{p} {list(s)}" for p, s in shapes.items()) in out
    assert "W_i [5, 3], b_ii [5], U_i [5, 5]" in out   # lstm, by hand


def test_cells_with_names(capsys):
    assert main(["cells", "gru_cho"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gru_cho  (plugin gru; state ['h'], output h)")
    assert "U_n @ (r * h_prev)" in out and "lstm" not in out
    assert "parameters (D=32, H=64): W_r [64, 32], U_r [64, 64], b_r [64]" in out


def test_cells_unknown_name(capsys):
    assert main(["cells", "lstm", "nosuchcell"]) == 2
    err = capsys.readouterr().err
    assert "no cell named 'nosuchcell'; registered:" in err and "gru_cho" in err


def test_check_prints_the_worst_error_per_parameter(capsys):
    assert main(["check", "gru", "--steps", "3", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    reference = check_gradients("gru", steps=3, batch=2)   # same seed and sizes: same numbers
    assert out.startswith("gradient check of cell 'gru' (float64, central differences)")
    rows = dict(re.findall(r"^(\S+)\s+(\d\.\d\de[-+]\d\d)$", out, re.M))
    assert set(rows) == set(reference.errors) == {"x", "state0.h"} | set(functional.param_shapes(
        se.get_cell("gru"), 3, 4))
    for name, text in rows.items():
        assert text == f"{reference.errors[name]:.2e}"
        assert float(text) < 1e-6
    assert out.rstrip().endswith("OK (tolerance 1e-06)")


def test_check_fails_with_exit_code_1_when_over_tolerance(capsys):
    assert main(["check", "rnn", "--steps", "2", "--batch", "2", "--tolerance", "1e-30"]) == 1
    out = capsys.readouterr().out
    assert "<-- FAIL" in out and out.rstrip().endswith("FAILED (tolerance 1e-30)")


def test_check_unknown_cell(capsys):
    assert main(["check", "lstn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no cell named 'lstn' (did you mean 'lstm'?)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_prints_compilable_source(capsys, dtype):
    assert main(["kernel", "gru_cho", "--dtype", dtype]) == 0
    src = capsys.readouterr().out
    assert "def forward_train" in src and "def forward_infer" in src and "def backward" in src
    assert f"F = np.{dtype}" in src and "cell 'gru_cho'" in src
    compile(src, "<seqengine kernel gru_cho>", "exec")
    for line in se.get_cell("gru_cho").equations.splitlines():
        assert line in src   # the declaration is documented in the module


def test_kernel_unknown_cell(capsys):
    assert main(["kernel", "nope"]) == 2
    err = capsys.readouterr().err
    registered = err.split("registered: ")[1].strip().split(", ")
    assert "error: no cell named 'nope'" in err and registered == sorted(se.cells())


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["kernel", "lstm", "--dtype", "float16"])
    assert info.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_console_script_entry_point():
    """The installed `seqengine` script runs `seqengine.cli:main` (one subprocess, the cheapest command)."""
    script = os.path.join(os.path.dirname(sys.executable), "seqengine")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "seqengine.cli"]
    proc = subprocess.run(cmd + ["kernel", "nosuch"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: no cell named 'nosuch'" in proc.stderr
