"""Plugin loading: one pluggy PluginManager, loaded explicitly and lazily.

Plugins come from the ``seqengine`` entry-point group; the built-in cells
(package ``seqengine_cells``, in ``plugins/``) are loaded the same way.
``SEQENGINE_PLUGINS`` (comma-separated entry-point names, or ``"none"``)
restricts which entry points load.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import warnings

import pluggy

from . import hookspecs
from .cell import Cell
from .compiler.parse import parse_cell

ENV_PLUGINS = "SEQENGINE_PLUGINS"


class PluginError(RuntimeError):
    """A plugin that cannot be used (a clash of cell names, a misspelt hook)."""


class UnknownCellError(KeyError):
    """A cell name that no plugin registered."""

    def __str__(self):
        return str(self.args[0])


class PluginLoadWarning(UserWarning):
    """A plugin failed to import or to register; the others still load."""


class Registry:
    def __init__(self):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.cells: dict[str, Cell] = {}
        self.owner: dict[str, str] = {}        # cell name -> plugin name
        self.failed: dict[str, str] = {}       # plugin name -> error
        self.loaded = False
        self._lock = threading.Lock()

    def _allowed(self) -> set[str] | None:
        raw = os.environ.get(ENV_PLUGINS)
        if raw is None or raw.strip() == "":
            return None
        return set() if raw.strip().lower() == "none" else {p.strip() for p in raw.split(",") if p.strip()}

    def load(self):
        with self._lock:
            if self.loaded:
                return
            allowed = self._allowed()
            for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
                if allowed is not None and ep.name not in allowed:
                    continue
                if self.pm.has_plugin(ep.name):
                    continue
                try:
                    module = ep.load()
                except Exception as e:   # a broken plugin must not stop the others
                    self.failed[ep.name] = f"{type(e).__name__}: {e}"
                    warnings.warn(f"seqengine plugin {ep.name!r} ({ep.value}) failed to import: "
                                  f"{type(e).__name__}: {e}", PluginLoadWarning, stacklevel=3)
                    continue
                try:
                    self.add_plugin(module, ep.name, from_entry_point=True)
                except PluginError as e:   # a misspelt hook: reported, and the others still load
                    self.failed[ep.name] = str(e)
                    warnings.warn(str(e), PluginLoadWarning, stacklevel=3)
            self.loaded = True

    def add_plugin(self, plugin, name: str | None = None, from_entry_point: bool = False) -> str:
        """Register a plugin object (module or class instance) and collect its cells."""
        try:
            name = self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as e:   # bad hook signature, name taken
            if name is not None and self.pm.get_plugin(name) is plugin:
                self.pm.unregister(plugin)
            raise PluginError(f"seqengine plugin {name!r}: {e}") from None
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            self.pm.unregister(plugin)
            raise PluginError(f"seqengine plugin {name!r}: {e}") from None
        undecorated = [attr for attr in dir(plugin) if attr.startswith(f"{hookspecs.PROJECT}_")
                       and callable(getattr(plugin, attr, None)) and not self.pm.parse_hookimpl_opts(plugin, attr)]
        if undecorated:   # pluggy skips them silently: the plugin would register nothing
            self.pm.unregister(plugin)
            raise PluginError(f"seqengine plugin {name!r}: {', '.join(undecorated)} lacks the "
                              f"@seqengine.hookimpl decorator, so it would never be called")
        new: list[str] = []

        def register(cell):
            if not isinstance(cell, Cell):
                raise TypeError(f"plugin {name!r}: register() takes a seqengine.Cell, got {type(cell).__name__}")
            parse_cell(cell)   # validate on arrival
            if cell.name in self.cells:
                raise PluginError(f"cell {cell.name!r} is registered by two plugins: "
                                  f"{self.owner[cell.name]!r} and {name!r}")
            self.cells[cell.name] = cell
            self.owner[cell.name] = name
            new.append(cell.name)

        hook = self.pm.subset_hook_caller("seqengine_register_cells",
                                          remove_plugins=[p for p in self.pm.get_plugins() if p is not plugin])
        try:
            hook(register=register)
        except Exception as e:
            for c in new:
                del self.cells[c], self.owner[c]
            self.pm.unregister(plugin)
            if not from_entry_point:
                raise
            self.failed[name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"seqengine plugin {name!r} failed to register its cells: {e}",
                          PluginLoadWarning, stacklevel=4)
        return name

    def remove_plugin(self, name: str):
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        for c in [c for c, owner in self.owner.items() if owner == name]:
            del self.cells[c], self.owner[c]


_registry = Registry()


def registry() -> Registry:
    return _registry


def load_plugins() -> Registry:
    _registry.load()
    return _registry


def cells() -> dict[str, Cell]:
    """{name: Cell} of every registered cell (loads the plugins on first use)."""
    return dict(load_plugins().cells)


def get_cell(cell: str | Cell) -> Cell:
    if isinstance(cell, Cell):
        parse_cell(cell)
        return cell
    if not isinstance(cell, str):
        raise TypeError(f"cell must be a registered cell name or a seqengine.Cell, got {type(cell).__name__}")
    known = cells()
    if cell not in known:
        import difflib
        close = difflib.get_close_matches(cell, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownCellError(f"no cell named {cell!r}{hint}; registered: {', '.join(sorted(known)) or 'none'}")
    return known[cell]
