"""The CUDA emitter's rewrites of generated source (text only: runs in every pytest process, no numba-cuda
needed): `unsigned_subscripts`, which takes Numba's wraparound code out of the step kernels, and
`hoist_loads`, which issues the pointwise work's loads before the products."""

from __future__ import annotations

import pytest

from seqengine.backends.cuda.emit import hoist_loads, unsigned_subscripts


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


def test_hoist_loads_moves_unconditional_loads_of_far_arrays_once():
    tail = ["    if t >= lengths[b]:",
            "        d_state_h[t & 1, b, j] = d_state_h[(t + 1) & 1, b, j]",   # conditional: stays
            "        return",
            "    i_ = saved_i[t, b, j]",
            "    d_h_ = d_state_h[t + 1 & 1, b, j] + d_gemm_h + d_y[t, b, j] + param_b[j]",
            "    d_state_c[t & 1, b, j] = d_h_ * i_",
            "    c_ = d_state_c[t & 1, b, j] + d_state_h[(t + 1) & 1, b, j]   # after its store: stays"]
    loads, rest = hoist_loads(tail, limit=8)
    assert loads == ["if active and cuda.threadIdx.z == 0:   # the pointwise work's loads, in flight during the products",
                     "    pf0 = saved_i[t, b, j]",
                     "    pf1 = d_state_h[t + 1 & 1, b, j]",
                     "    pf2 = d_y[t, b, j]",
                     "else:", "    pf0 = F(0.0)", "    pf1 = F(0.0)", "    pf2 = F(0.0)"]
    assert rest[:3] == tail[:3]
    assert rest[3:] == ["    i_ = pf0",
                        "    d_h_ = pf1 + d_gemm_h + pf2 + param_b[j]",         # a vector parameter stays
                        "    d_state_c[t & 1, b, j] = d_h_ * i_",
                        "    c_ = d_state_c[t & 1, b, j] + pf1   # after its store: stays"]


def test_hoist_loads_keeps_to_its_limit():
    tail = [f"    v{k}_ = saved_v{k}[t, b, j]" for k in range(5)]
    loads, rest = hoist_loads(tail, limit=2)
    assert [line for line in loads if "= saved" in line] == ["    pf0 = saved_v0[t, b, j]", "    pf1 = saved_v1[t, b, j]"]
    assert rest == ["    v0_ = pf0", "    v1_ = pf1"] + tail[2:]
    assert hoist_loads(["    y[t, b, j] = F(0.0)"]) == ([], ["    y[t, b, j] = F(0.0)"])
