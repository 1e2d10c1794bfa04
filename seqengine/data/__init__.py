"""Data shipped with seqengine.

`tinyshakespeare.txt` (1,115,394 bytes, 65 distinct characters): a selection of Shakespeare's plays,
public domain, as distributed with karpathy/char-rnn; the default corpus of `seqengine train --task chars`.
"""

from importlib.resources import files


def default_corpus_path() -> str:
    """Filesystem path of the shipped tiny Shakespeare corpus."""
    return str(files(__name__) / "tinyshakespeare.txt")
