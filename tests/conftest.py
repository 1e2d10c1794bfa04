"""Shared fixtures for the seqengine test suite; the helpers live in `_seqengine_testing`.

Shapes are kept tiny (T <= 5, B <= 3, H <= 5): Numba compiles each kernel once
per machine (cached on disk), after that every test here runs in milliseconds.
"""

from __future__ import annotations

import pytest

from _seqengine_testing import (BUILTIN, CORPUS_TEXT, REGISTERED, assert_close, cast,  # noqa: F401 (re-exported)
                                make_problem, run_engine)


def pytest_generate_tests(metafunc):
    # every test taking `registered_cell` runs for each cell in the registry, including cells added later
    if "registered_cell" in metafunc.fixturenames:
        metafunc.parametrize("registered_cell", REGISTERED)


@pytest.fixture
def fresh_registry(monkeypatch):
    """A new, empty `Registry` (the global one is left alone)."""
    from seqengine.plugins import Registry
    return Registry()


@pytest.fixture
def corpus(tmp_path):
    """Path of a small UTF-8 text file (CORPUS_TEXT) for the character-level tasks."""
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")
    return str(path)
