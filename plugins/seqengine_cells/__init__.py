"""The cells that ship with seqengine, registered as ordinary plugins.

Each module is one entry point of the ``seqengine`` group in seqengine's own
``pyproject.toml``; seqengine itself never imports this package.
"""
