"""seqengine: recurrent cells declared as equations, compiled to fused Numba kernels.

    import seqengine as se
    rnn = se.RNN("lstm", input_size=32, hidden_size=64, seed=0)
    y, state = rnn.forward(x)
    dx, dstate0 = rnn.backward(dy)
"""

__version__ = "0.1.0"

from .cell import Cell, SpecError
from .hookspecs import hookimpl, hookspec
from .plugins import PluginError, PluginLoadWarning, UnknownCellError, cells, get_cell, load_plugins
from .rnn import RNN
from .checkpoint import CheckpointError, load
from .finite import NonFiniteError

__all__ = ["Cell", "SpecError", "hookimpl", "hookspec", "PluginError", "PluginLoadWarning",
           "UnknownCellError", "cells", "get_cell", "load_plugins", "RNN", "load", "CheckpointError", "NonFiniteError", "__version__"]
