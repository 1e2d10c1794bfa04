"""`emit.unsigned_subscripts`, the rewrite that takes Numba's wraparound code out of the CUDA step kernels
(text only: runs in every pytest process, no numba-cuda needed)."""

from __future__ import annotations

import pytest

from seqengine.backends.cuda.emit import unsigned_subscripts


@pytest.mark.parametrize("source,expected", [
    ("y = a[t, b, 2 * H + j]", "y = a[U(t), U(b), U(2 * H + j)]"),
    # nested subscripts, parentheses with commas inside an index
    ("s[lengths[b], (t + 1) & 1] = f(x[k], 1)", "s[U(lengths[U(b)]), U((t + 1) & 1)] = f(x[U(k)], 1)"),
    # attributes are tuples, not arrays; slices stay as they are
    ("K = d.shape[2] if t < d.shape[0] else 0", "K = d.shape[2] if t < d.shape[0] else 0"),
    ("w = a[1:]", "w = a[1:]"),
    # comments are left alone, even with unbalanced brackets
    ("a[t] = 0   # see x[t, and more", "a[U(t)] = 0   # see x[t, and more"),
    ("d_params[7, b, j] += v", "d_params[U(7), U(b), U(j)] += v"),
])
def test_every_index_is_wrapped_once(source, expected):
    assert unsigned_subscripts(source) == expected


def test_generated_step_bodies_have_no_signed_subscript():
    """Every subscript in the bodies of every built-in cell's kernels went through the rewrite."""
    import re

    import seqengine as se
    from seqengine.backends.cuda import kernel_source
    for name in sorted(se.cells()):
        source = kernel_source(se.get_cell(name))
        bodies = source[source.index("def forward_train_seg0("):]
        for line in bodies.splitlines():
            code = line.partition("#")[0]
            for m in re.finditer(r"(?<![\w.])[A-Za-z_]\w*\[([^\]]*)\]", code):
                if ":" in m.group(1):
                    continue
                assert all(p.strip().startswith("U(") for p in m.group(1).split(",")), (name, line)
