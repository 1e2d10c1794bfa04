"""Generated modules live as real files so that Numba's ``cache=True`` works.

A module is written once to ``<cache dir>/<stem>_<hash>.py``, where the hash
covers the generated source and the seqengine and Numba versions: the same
declaration in a second process imports the same file and Numba loads its
compiled kernels from ``__pycache__`` beside it instead of compiling again.
The cache folder is ``$SEQENGINE_CACHE_DIR`` or ``~/.cache/seqengine``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("SEQENGINE_CACHE_DIR") or Path.home() / ".cache" / "seqengine"
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_generated_module(stem: str, source: str):
    import numba

    from .. import __version__
    digest = hashlib.sha256(f"{__version__}\n{numba.__version__}\n{source}".encode()).hexdigest()[:16]
    module_name = f"seqengine_generated_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = cache_dir() / f"{module_name}.py"
    if not path.exists() or path.read_text() != source:
        # write-then-rename: a concurrent process never imports a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
