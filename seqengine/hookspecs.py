"""The hooks a seqengine plugin may implement.

Each hookspec is the full documentation of its hook. A plugin is a module (or
package) with ``@seqengine.hookimpl`` functions, announced in its
``pyproject.toml``::

    [project.entry-points.seqengine]
    my_cells = "my_package.cells"
"""

import pluggy

PROJECT = "seqengine"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def seqengine_register_cells(register):
    """Register recurrent cells.

    Called once per plugin when seqengine loads its plugins (on the first call
    of ``seqengine.cells()``, ``seqengine.RNN(...)`` or the command line).

    :param register: call ``register(cell)`` once per ``seqengine.Cell``. The
        declaration is parsed and validated on arrival: a malformed one raises
        ``seqengine.SpecError``; a name that another plugin already registered
        raises ``seqengine.PluginError`` naming both plugins.
    :return: ignored.
    """
