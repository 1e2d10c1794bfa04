"""Plugins: registering cells at run time, clashes, misspelt hooks, broken plugins,
SEQENGINE_PLUGINS, and a real third-party package installed with pip."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import seqengine as se
import seqengine.gradcheck
from seqengine.plugins import Registry, registry

from _seqengine_testing import assert_close, make_problem, run_engine

EP = importlib.metadata.EntryPoint

MGU_EQUATIONS = """
    f = sigmoid(W_f @ x + U_f @ h_prev + b_f)
    n = tanh(W_n @ x + U_n @ (f * h_prev) + b_n)
    h = (1 - f) * h_prev + f * n
"""


class MguPlugin:
    """A plugin object: any object with @hookimpl methods."""

    def __init__(self, name="mgu"):
        self.name = name

    @se.hookimpl
    def seqengine_register_cells(self, register):
        register(se.Cell(name=self.name, state=["h"], equations=MGU_EQUATIONS, doc="minimal gated unit"))


@pytest.fixture
def plugged():
    """Register plugins in the global registry for one test and remove them afterwards."""
    names = []

    def add(obj, name):
        names.append(registry().add_plugin(obj, name))
        return names[-1]

    se.load_plugins()
    before = set(se.cells())
    yield add
    for n in names:
        registry().remove_plugin(n)
    assert set(se.cells()) == before


def fake_entry_points(monkeypatch, eps):
    def entry_points(group=None, **kw):
        return [e for e in eps if group is None or e.group == group]
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def plugin_module(tmp_path, monkeypatch, modname, body):
    (tmp_path / f"{modname}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(modname, None)
    return modname


# -- runtime registration --------------------------------------------------------------

def test_add_and_remove_a_plugin(plugged):
    assert "mgu" not in se.cells()
    name = plugged(MguPlugin(), "mgu_plugin_obj")
    assert name == "mgu_plugin_obj"
    assert "mgu" in se.cells() and registry().owner["mgu"] == "mgu_plugin_obj"
    assert se.get_cell("mgu").doc == "minimal gated unit"
    # usable right away, and its gradients are right
    result = se.gradcheck.check_gradients("mgu", steps=3, batch=2)
    assert result.ok and set(result.errors) == {"x", "state0.h", "W_f", "U_f", "b_f", "W_n", "U_n", "b_n"}
    registry().remove_plugin("mgu_plugin_obj")
    assert "mgu" not in se.cells()
    assert not registry().pm.has_plugin("mgu_plugin_obj")
    with pytest.raises(se.UnknownCellError, match="no cell named 'mgu'"):
        se.get_cell("mgu")


def test_two_cells_with_one_name_name_both_plugins(plugged):
    plugged(MguPlugin("twin"), "first_plugin")
    with pytest.raises(se.PluginError) as info:
        registry().add_plugin(MguPlugin("twin"), "second_plugin")
    msg = str(info.value)
    assert "cell 'twin' is registered by two plugins" in msg and "'first_plugin'" in msg and "'second_plugin'" in msg
    # the loser is not left half-registered; the winner keeps its cell
    assert not registry().pm.has_plugin("second_plugin")
    assert registry().owner["twin"] == "first_plugin"


def test_clash_with_a_builtin_cell(plugged):
    with pytest.raises(se.PluginError, match="cell 'lstm' is registered by two plugins: 'lstm' and 'mine'"):
        plugged(MguPlugin("lstm"), "mine")
    assert registry().owner["lstm"] == "lstm"
    assert se.get_cell("lstm").state == ("h", "c")


def test_misspelt_hook_name(fresh_registry):
    class Typo:
        @se.hookimpl
        def seqengine_register_cell(self, register):   # missing "s"
            register(se.Cell(name="never", state=["h"], equations="h = tanh(W @ x)"))

    with pytest.raises(se.PluginError) as info:
        fresh_registry.add_plugin(Typo(), "typo_plugin")
    msg = str(info.value)
    assert "'typo_plugin'" in msg and "unknown hook 'seqengine_register_cell'" in msg
    assert not fresh_registry.pm.has_plugin("typo_plugin") and "never" not in fresh_registry.cells


def test_hookimpl_with_a_wrong_argument_name(fresh_registry):
    class WrongArg:
        @se.hookimpl
        def seqengine_register_cells(self, registr):
            pass

    with pytest.raises(se.PluginError) as info:
        fresh_registry.add_plugin(WrongArg(), "wrong_arg")
    msg = str(info.value)
    assert "'wrong_arg'" in msg and "registr" in msg
    assert not fresh_registry.pm.has_plugin("wrong_arg")


def test_register_takes_a_cell(fresh_registry):
    class NotACell:
        @se.hookimpl
        def seqengine_register_cells(self, register):
            register("gru2")

    with pytest.raises(TypeError, match=r"plugin 'not_a_cell': register\(\) takes a seqengine.Cell, got str"):
        fresh_registry.add_plugin(NotACell(), "not_a_cell")


def test_malformed_cell_is_rejected_on_arrival(fresh_registry):
    class Malformed:
        @se.hookimpl
        def seqengine_register_cells(self, register):
            register(se.Cell(name="good", state=["h"], equations="h = tanh(W @ x)"))
            register(se.Cell(name="bad", state=["h"], equations="h = tanh(W @ x) ** 2"))

    with pytest.raises(se.SpecError, match=r"cell 'bad', line 1.*operator `\*\*`"):
        fresh_registry.add_plugin(Malformed(), "malformed")
    # all or nothing: the good cell registered before the bad one is rolled back
    assert fresh_registry.cells == {} and not fresh_registry.pm.has_plugin("malformed")


# -- loading from entry points ---------------------------------------------------------

def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(monkeypatch, fresh_registry, tmp_path):
    good = plugin_module(tmp_path, monkeypatch, "se_test_good_plugin", f'''
        import seqengine
        @seqengine.hookimpl
        def seqengine_register_cells(register):
            register(seqengine.Cell(name="good_cell", state=["h"], equations="h = tanh(W @ x + U @ h_prev)"))
    ''')
    broken = plugin_module(tmp_path, monkeypatch, "se_test_broken_plugin", "raise RuntimeError('boom at import')\n")
    fake_entry_points(monkeypatch, [
        EP("broken", broken, "seqengine"),
        EP("missing", "se_test_no_such_module", "seqengine"),
        EP("good", good, "seqengine"),
        EP("rnn", "seqengine_cells.rnn", "seqengine"),
        EP("elsewhere", "se_test_no_such_module", "another_group"),
    ])
    with pytest.warns(se.PluginLoadWarning) as record:
        fresh_registry.load()
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 2, msgs
    assert "seqengine plugin 'broken' (se_test_broken_plugin) failed to import: RuntimeError: boom at import" in msgs
    assert any("'missing'" in m and "ModuleNotFoundError" in m and "se_test_no_such_module" in m for m in msgs)
    assert set(fresh_registry.cells) == {"good_cell", "rnn"}
    assert fresh_registry.owner == {"good_cell": "good", "rnn": "rnn"}
    assert set(fresh_registry.failed) == {"broken", "missing"}
    assert fresh_registry.failed["broken"] == "RuntimeError: boom at import"
    # loading twice is a no-op (no second warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh_registry.load()


def test_a_plugin_with_a_malformed_cell_is_reported_and_the_others_load(monkeypatch, fresh_registry, tmp_path):
    bad = plugin_module(tmp_path, monkeypatch, "se_test_badcell_plugin", '''
        import seqengine
        @seqengine.hookimpl
        def seqengine_register_cells(register):
            register(seqengine.Cell(name="badc", state=["h"], equations="h = tanhh(W @ x)"))
    ''')
    fake_entry_points(monkeypatch, [EP("badcells", bad, "seqengine"), EP("rnn", "seqengine_cells.rnn", "seqengine")])
    with pytest.warns(se.PluginLoadWarning, match=r"plugin 'badcells' failed to register its cells: .*tanhh"):
        fresh_registry.load()
    assert set(fresh_registry.cells) == {"rnn"} and "badcells" in fresh_registry.failed


def test_a_plugin_with_a_misspelt_hook_does_not_stop_the_others(monkeypatch, fresh_registry, tmp_path):
    typo = plugin_module(tmp_path, monkeypatch, "se_test_typo_plugin", '''
        import seqengine
        @seqengine.hookimpl
        def seqengine_register_cell(register):
            pass
    ''')
    fake_entry_points(monkeypatch, [EP("typo", typo, "seqengine"), EP("rnn", "seqengine_cells.rnn", "seqengine")])
    with pytest.warns(se.PluginLoadWarning, match=r"'typo'.*unknown hook 'seqengine_register_cell'"):
        fresh_registry.load()
    assert set(fresh_registry.cells) == {"rnn"} and "typo" in fresh_registry.failed


def test_clash_between_entry_points_names_both(monkeypatch, fresh_registry, tmp_path):
    again = plugin_module(tmp_path, monkeypatch, "se_test_rnn_again", '''
        import seqengine
        @seqengine.hookimpl
        def seqengine_register_cells(register):
            register(seqengine.Cell(name="rnn", state=["h"], equations="h = tanh(W @ x)"))
    ''')
    fake_entry_points(monkeypatch, [EP("rnn", "seqengine_cells.rnn", "seqengine"),
                                    EP("rnn_again", again, "seqengine")])
    with pytest.warns(se.PluginLoadWarning, match="cell 'rnn' is registered by two plugins: 'rnn' and 'rnn_again'"):
        fresh_registry.load()
    assert fresh_registry.owner == {"rnn": "rnn"} and "rnn_again" in fresh_registry.failed
    assert fresh_registry.cells["rnn"].equations.startswith("h = tanh(W @ x + b_i")   # the first one kept


def test_one_module_under_two_plugin_names(fresh_registry):
    import seqengine_cells.rnn as module
    fresh_registry.add_plugin(module, "rnn")
    with pytest.raises(se.PluginError, match="seqengine plugin 'rnn2': Plugin already registered"):
        fresh_registry.add_plugin(module, "rnn2")
    with pytest.raises(se.PluginError, match="seqengine plugin 'rnn': Plugin name already registered"):
        fresh_registry.add_plugin(MguPlugin(), "rnn")
    assert fresh_registry.owner == {"rnn": "rnn"}


BUILTIN_EPS = [EP("lstm", "seqengine_cells.lstm", "seqengine"), EP("gru", "seqengine_cells.gru", "seqengine"),
               EP("rnn", "seqengine_cells.rnn", "seqengine")]


@pytest.mark.parametrize("env, expected", [
    ("rnn", {"rnn"}),
    ("gru, rnn", {"gru", "gru_cho", "rnn"}),
    ("lstm,", {"lstm", "peephole", "coupled"}),
    ("none", set()),
    ("NONE", set()),
    ("", {"lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"}),
    (None, {"lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"}),
])
def test_seqengine_plugins_env_restricts_loading(monkeypatch, env, expected):
    fake_entry_points(monkeypatch, BUILTIN_EPS)
    if env is None:
        monkeypatch.delenv("SEQENGINE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("SEQENGINE_PLUGINS", env)
    reg = Registry()
    reg.load()
    assert set(reg.cells) == expected
    assert {reg.owner[c] for c in reg.cells} <= {"lstm", "gru", "rnn"}


def test_builtin_cells_come_from_the_real_entry_points():
    eps = {e.name: e.value for e in importlib.metadata.entry_points(group="seqengine")}
    assert {"lstm": "seqengine_cells.lstm", "gru": "seqengine_cells.gru", "rnn": "seqengine_cells.rnn"}.items() \
        <= eps.items()
    assert registry().owner["peephole"] == "lstm" and registry().owner["gru_cho"] == "gru"


def test_unknown_cell_error_suggests_a_name():
    with pytest.raises(se.UnknownCellError) as info:
        se.get_cell("lstn")
    msg = str(info.value)
    assert "no cell named 'lstn'" in msg and "did you mean 'lstm'?" in msg and "gru_cho" in msg
    assert isinstance(info.value, KeyError)
    with pytest.raises(TypeError, match="cell must be a registered cell name or a seqengine.Cell, got int"):
        se.get_cell(3)


# -- a real third-party package, installed with pip --------------------------------------

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "seqengine-mgu-testplugin"
version = "0.0.1"
dependencies = ["seqengine"]

[project.entry-points.seqengine]
mgu_plugin = "seqengine_mgu_testplugin.cells"

[tool.setuptools]
packages = ["seqengine_mgu_testplugin"]
"""

PLUGIN_MODULE = f'''
"""Minimal gated unit (Zhou et al. 2016): one gate for forgetting and resetting."""
import seqengine


@seqengine.hookimpl
def seqengine_register_cells(register):
    register(seqengine.Cell(name="mgu", state=["h"], doc="minimal gated unit", equations="""{MGU_EQUATIONS}"""))
'''

SUBPROCESS_SCRIPT = r'''
import json, sys, warnings
import numpy as np
warnings.simplefilter("error")          # any PluginLoadWarning fails the run
import seqengine as se
from seqengine.gradcheck import check_gradients
cells = se.cells()
out = {"cells": sorted(cells), "owner": se.plugins.registry().owner.get("mgu")}
rnn = se.RNN("mgu", input_size=3, hidden_size=4, seed=0, dtype=np.float64)
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 2, 3))
y, state = rnn.forward(x)
dx, dstate0 = rnn.backward(np.ones_like(y))
out["y_shape"], out["dx_shape"] = list(y.shape), list(dx.shape)
out["params"] = {k: v.tolist() for k, v in rnn.params.items()}
out["y"], out["dx"] = y.tolist(), dx.tolist()
out["grads"] = {k: v.tolist() for k, v in rnn.grads.items()}
res = check_gradients("mgu", steps=3, batch=2)
out["gradcheck_ok"], out["gradcheck_errors"] = res.ok, res.errors
print("RESULT " + json.dumps(out))
'''


def test_third_party_plugin_package_installed_with_pip(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    (src / "seqengine_mgu_testplugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "seqengine_mgu_testplugin" / "__init__.py").write_text("")
    (src / "seqengine_mgu_testplugin" / "cells.py").write_text(PLUGIN_MODULE)
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    dist_info = list(target.glob("seqengine_mgu_testplugin-*.dist-info"))
    assert len(dist_info) == 1
    assert "mgu_plugin = seqengine_mgu_testplugin.cells" in (dist_info[0] / "entry_points.txt").read_text()

    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("SEQENGINE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(line) == 1, proc.stdout
    out = json.loads(line[0][len("RESULT "):])
    assert "mgu" in out["cells"] and {"lstm", "gru", "rnn"} <= set(out["cells"])
    assert out["owner"] == "mgu_plugin"
    assert out["y_shape"] == [4, 2, 4] and out["dx_shape"] == [4, 2, 3]
    assert out["gradcheck_ok"] is True
    assert set(out["gradcheck_errors"]) == {"x", "state0.h", "W_f", "U_f", "b_f", "W_n", "U_n", "b_n"}
    assert max(out["gradcheck_errors"].values()) < 1e-7

    # the subprocess's numbers equal an independent NumPy evaluation of the MGU equations
    p = {k: np.array(v) for k, v in out["params"].items()}
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, ys = np.zeros((2, 4)), []
    for t in range(4):
        f = sig(x[t] @ p["W_f"].T + h @ p["U_f"].T + p["b_f"])
        n = np.tanh(x[t] @ p["W_n"].T + (f * h) @ p["U_n"].T + p["b_n"])
        h = (1 - f) * h + f * n
        ys.append(h)
    assert_close(np.array(out["y"]), np.stack(ys), 1e-12, 1e-12, "mgu y vs NumPy")


def test_mgu_plugin_gradients_vs_torch(plugged):
    """The same MGU, registered in-process, against torch autograd (all gradients)."""
    torch = pytest.importorskip("torch")
    plugged(MguPlugin("mgu"), "mgu_torch_plugin")
    cell, params, x, state0, dy, dfinal = make_problem("mgu", steps=4, batch=2, seed=7)
    ours = run_engine(cell, params, x, state0, dy, dfinal)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx, th = torch.tensor(x, requires_grad=True), torch.tensor(state0["h"], requires_grad=True)
    h, ys = th, []
    for t in range(x.shape[0]):
        f = torch.sigmoid(tx[t] @ tp["W_f"].T + h @ tp["U_f"].T + tp["b_f"])
        n = torch.tanh(tx[t] @ tp["W_n"].T + (f * h) @ tp["U_n"].T + tp["b_n"])
        h = (1 - f) * h + f * n
        ys.append(h)
    y = torch.stack(ys)
    ((y * torch.tensor(dy)).sum() + (h * torch.tensor(dfinal["h"])).sum()).backward()
    assert_close(ours[0], y.detach().numpy(), 1e-10, 1e-10, "y")
    assert_close(ours[1]["h"], h.detach().numpy(), 1e-10, 1e-10, "final h")
    assert_close(ours[2], tx.grad.numpy(), 1e-10, 1e-10, "dx")
    assert_close(ours[3]["h"], th.grad.numpy(), 1e-10, 1e-10, "dh0")
    for k in params:
        assert_close(ours[4][k], tp[k].grad.numpy(), 1e-10, 1e-10, f"d{k}")
