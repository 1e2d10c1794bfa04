"""seqengine plugin: recurrent cells from papers, declared in the papers' own notation.

Registered through the ``seqengine`` entry point ``paper_cells`` (see pyproject.toml);
seqengine loads ``seqengine_paper_cells.cells`` on first use. Nothing is registered
on import.
"""

__version__ = "0.1.0"
