"""Measurements that need a fresh process: compile time and peak memory.

The runner starts ``python -m seqengine.bench.probe <what> ...`` and reads one
JSON line from its stdout. A fresh interpreter is the only honest way to see a
first call (nothing jitted, nothing imported) and an untouched RSS high-water mark.

    compile --cell lstm --shape T B D H      first and steady forward+backward, first inference forward
    memory  --cell lstm --shape T B D H --impl seqengine|torch-native
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time


def _data(T, B, D, H, n_states, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    return x, dy


def probe_compile(cell: str, T: int, B: int, D: int, H: int, steady_repeats: int = 3) -> dict:
    import numpy as np

    import seqengine as se
    from seqengine.compiler.cache import cache_dir

    rnn = se.RNN(cell, D, H, seed=0, dtype=np.float32)
    x, dy = _data(T, B, D, H, len(rnn.state_names))

    def step():
        t = time.perf_counter()
        rnn.train()
        y, _ = rnn.forward(x)
        rnn.backward(dy)
        return time.perf_counter() - t

    def infer():
        t = time.perf_counter()
        rnn.eval()
        rnn.forward(x)
        return time.perf_counter() - t

    first_train = step()
    steady_train = sorted(step() for _ in range(steady_repeats))[steady_repeats // 2]
    first_infer = infer()
    steady_infer = sorted(infer() for _ in range(steady_repeats))[steady_repeats // 2]
    return {"cell": cell, "shape": [T, B, D, H],
            "first_train_step_s": first_train, "steady_train_step_s": steady_train,
            "first_forward_s": first_infer, "steady_forward_s": steady_infer,
            "cache_dir": str(cache_dir())}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024          # Linux: KiB


def _arrays_in(obj, prefix="", seen=None) -> dict:
    """Every distinct NumPy array reachable from `obj` (dicts, sequences, object attributes), by path."""
    import numpy as np
    seen = set() if seen is None else seen
    found = {}
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):            # the array that owns (or leases) the memory
            base = base.base
        owner = id(base if base.base is None else base.base)  # a pooled array's base is its lease
        if owner not in seen:
            seen.add(owner)
            found[prefix or "array"] = base
        return found
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return found
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__"):
        items = vars(obj).items()
    else:
        return found
    for k, v in items:
        found.update(_arrays_in(v, f"{prefix}.{k}" if prefix else str(k), seen))
    return found


def probe_memory(cell: str, T: int, B: int, D: int, H: int, impl: str) -> dict:
    """Peak memory of one training step, beyond what existed before it (inputs, weights, compiled code)."""
    import tracemalloc

    import numpy as np

    import seqengine as se
    from seqengine.compiler.parse import parse_cell
    from seqengine.functional import param_shapes
    from seqengine.plugins import get_cell

    rnn = se.RNN(cell, D, H, seed=0, dtype=np.float32)
    c = get_cell(cell)
    x, dy = _data(T, B, D, H, len(rnn.state_names))
    out: dict = {"cell": cell, "shape": [T, B, D, H], "impl": impl}

    if impl == "seqengine":
        small_x = x[:2, :1].copy()
        rnn.forward(small_x)                        # load (or compile) the kernels before measuring
        rnn.backward(dy[:2, :1].copy())

        def step():
            y, _ = rnn.forward(x)
            rnn.backward(dy)
    elif impl == "torch-native":
        import torch
        mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](D, H)
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        y, _ = mod(tx[:2, :1].clone().requires_grad_(True))
        y.sum().backward()

        def step():
            xx = tx.detach().requires_grad_(True)
            y, _ = mod(xx)
            torch.autograd.backward([y], [tdy])
    else:
        raise SystemExit(f"memory probe: unknown impl {impl!r}")

    gc.collect()
    rss_before = _rss_now()
    maxrss_before = _maxrss()
    t = time.perf_counter()
    step()
    out["step_s"] = time.perf_counter() - t
    out["rss_before_bytes"] = rss_before
    maxrss_after = _maxrss()
    out["peak_rss_bytes"] = maxrss_after
    out["maxrss_before_bytes"] = maxrss_before
    # high-water mark during the step above what the process held just before it (pages touched);
    # masked when an earlier moment (imports, compilation) had set a higher mark than the step reached
    out["peak_rss_increase_bytes"] = max(0, maxrss_after - rss_before)
    out["rss_peak_masked"] = maxrss_after <= maxrss_before

    if impl == "seqengine":
        from seqengine.backends.cpu import workspace
        gc.collect()
        out["pool_free_bytes_after_step"] = workspace.POOL.free_bytes
        workspace.release()        # measure from an empty pool: every block the step uses is allocated (and traced)
        tracemalloc.start()
        step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["tracemalloc_peak_bytes"] = peak
        rnn.forward(x)                                # keep a tape alive to measure it
        arrays = _arrays_in(getattr(rnn, "_tape", None))      # the layer's private tape, read-only
        if arrays:
            out["tape_bytes"] = int(sum(a.nbytes for a in arrays.values()))
            out["tape_arrays"] = {k: [list(a.shape), int(a.nbytes)] for k, a in arrays.items()}

    # What the step cannot do without: parameters, and the activations backward must see.
    shapes = param_shapes(c, D, H)
    f32 = 4
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    gates = sum(1 for side in parse_cell(c).matrices.values() if side == "D")   # gate blocks: one x-product each
    n_states = len(c.state)
    out["needed"] = {
        "params_bytes": n_params * f32,
        "grads_bytes": n_params * f32,
        # states at steps 0..T and one activation per gate block per step (cuDNN/haste keep the same)
        "saved_activations_bytes": (n_states * (T + 1) + gates * T) * B * H * f32,
        "saved_activations_formula": f"({n_states} states x (T+1) + {gates} gates x T) x B x H x 4 bytes",
        "inputs_bytes": (x.nbytes + dy.nbytes),
        "outputs_bytes": T * B * H * f32 + T * B * D * f32,      # y and dx
    }
    out["needed"]["params_plus_saved_bytes"] = out["needed"]["params_bytes"] + \
        out["needed"]["saved_activations_bytes"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqengine.bench.probe")
    p.add_argument("what", choices=["compile", "memory"])
    p.add_argument("--cell", default="lstm")
    p.add_argument("--shape", type=int, nargs=4, metavar=("T", "B", "D", "H"), default=[100, 32, 128, 128])
    p.add_argument("--impl", default="seqengine")
    a = p.parse_args(argv)
    T, B, D, H = a.shape
    if a.what == "compile":
        res = probe_compile(a.cell, T, B, D, H)
    else:
        res = probe_memory(a.cell, T, B, D, H, a.impl)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
