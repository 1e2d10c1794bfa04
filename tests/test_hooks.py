"""Hooks kept honest (as datasette's test_docs.py / test_plugins.py): every hookspec is documented, in its
docstring and in docs/PLUGINS.md; every hookspec has a test; a misspelt hookimpl fails loudly."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import seqengine as se
from seqengine import hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "PLUGINS.md"


def hookspec_functions() -> dict:
    """{name: function} of every function marked @hookspec in seqengine.hookspecs."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker)}


HOOKS = sorted(hookspec_functions())


def test_there_are_hookspecs_and_the_plugin_manager_knows_each():
    assert HOOKS, "no hookspecs found: the meta-tests below would pass vacuously"
    pm = se.plugins.Registry().pm
    assert sorted(name for name in dir(pm.hook) if name.startswith(hookspecs.PROJECT + "_")) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_carries_the_project_prefix(hook):
    assert hook.startswith("seqengine_"), hook


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_docstring_documents_every_argument_and_the_return(hook):
    fn = hookspec_functions()[hook]
    doc = inspect.getdoc(fn) or ""
    assert len(doc.splitlines()) >= 3, f"{hook}: the hookspec's docstring is its documentation"
    for arg in inspect.signature(fn).parameters:
        assert f":param {arg}:" in doc, f"{hook}: argument {arg!r} is not documented"
    assert ":return:" in doc, f"{hook}: the return value is not documented"


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_is_documented_in_the_guide(hook):
    fn = hookspec_functions()[hook]
    heading = f"### `{hook}({', '.join(inspect.signature(fn).parameters)})`"
    text = GUIDE.read_text()
    assert heading in text, f"docs/PLUGINS.md has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert len(section.split()) > 20, f"the section on {hook} in docs/PLUGINS.md is too short to document it"


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_test(hook):
    """Some test outside this file implements the hook (a plugin class or module in a test)."""
    pattern = re.compile(rf"def {hook}\(")
    users = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
             if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert users, f"no test implements hook {hook}"


@pytest.mark.parametrize("typo", ["seqengine_register_cell", "seqengine_register_Cells", "seqengin_register_cells",
                                  "seqengine_registercells", "seqengine_cells"])
def test_a_misspelt_hookimpl_fails_loudly(fresh_registry, typo):
    """Any hookimpl whose name matches no hookspec is a PluginError naming the plugin and the name."""
    def impl(register):
        register(se.Cell(name="never", state=["h"], equations="h = tanh(W @ x)"))

    impl.__name__ = typo
    plugin = type("Plugin", (), {typo: staticmethod(se.hookimpl(impl))})()
    with pytest.raises(se.PluginError) as info:
        fresh_registry.add_plugin(plugin, "typo_plugin")
    assert "'typo_plugin'" in str(info.value) and typo in str(info.value)
    assert "never" not in fresh_registry.cells and not fresh_registry.pm.has_plugin("typo_plugin")


def test_a_hook_function_without_the_hookimpl_decorator_fails_loudly():
    from seqengine.plugins import PluginError, Registry

    class Forgetful:
        def seqengine_register_cells(self, register):   # no @seqengine.hookimpl
            raise AssertionError("must never be called")

    with pytest.raises(PluginError, match=r"seqengine_register_cells lacks the @seqengine.hookimpl decorator"):
        Registry().add_plugin(Forgetful(), "forgetful")
