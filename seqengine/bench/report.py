"""Write a run: results.json (everything), results.md (the table of medians), results.png (optional)."""

from __future__ import annotations

import json
from pathlib import Path

PEERS = ("torch-native", "torch-loop", "numpy", "seqengine-cuda", "torch-native-cuda", "torch-loop-cuda")


def _mib(b):
    return f"{b / 2**20:.0f} MiB" if b is not None else "-"


def _ms(s):
    return f"{1e3 * s:.2f}" if s is not None else "-"


def _pct(frac):
    return "-" if frac is None else (f"{100 * frac:.0f}" if frac >= 0.1 else f"{100 * frac:.2g}")


def markdown(result: dict) -> str:
    m = result["machine"]
    peak = result["gemm_peak"]
    blas = [p for p in m["thread_pools"] if p["user_api"] == "blas"]
    lines = [
        "# seqengine benchmark" + (" (quick smoke run, not a measurement)" if result.get("quick") else ""),
        "",
        f"Command: `{result.get('command', 'seqengine bench')}`  ",
        f"Started {result['started']}, {result['elapsed_s']:.0f} s.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['cores_available']} cores available "
        f"({m['cpu_count_host']} on the host); load average at start {' '.join(m.get('loadavg_at_start', []))}",
        f"- Threads used: {result['settings']['threads']} (Numba {m['numba_threads']}, threading layer "
        f"{m['numba_threading_layer']}; torch {m.get('torch_threads')})",
        "- BLAS: " + "; ".join(f"{p['internal_api']} {p['version']} ({p['prefix']}, kernel {p.get('architecture')}, "
                               f"{p['threading_layer']})" for p in blas),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- float32 GEMM peak measured in this run ({peak['n']}^3, best of {peak['repeats']}): "
        f"{peak['peak_gflops']:.1f} GFLOP/s (NumPy BLAS {peak['numpy_gflops']:.1f}, torch "
        f"{(peak['torch_gflops'] or 0):.1f})",
        "",
        "## Run time (median, ms)",
        "",
        f"{result['settings']['repeats']} timed rounds after {result['settings']['warmup']} warm-up rounds; "
        "implementations alternated round-robin. ratio = peer time / seqengine time (> 1: seqengine is faster; "
        "the torch GPU peers (*-cuda) against seqengine-cuda, seqengine-cuda against the CPU seqengine). "
        "GFLOP/s counts GEMM FLOPs only (forward 2·T·B·(D+H)·G·H, training step 3x that); "
        "% peak is against the GEMM peak above. "
        f"Every peer was checked against seqengine before timing: max|peer - seqengine| / max|seqengine| "
        f"<= {result['settings']['tolerance']['forward']:g} (forward), "
        f"{result['settings']['tolerance']['train']:g} (training step; outputs, dx, dstate0, every gradient).",
        "",
    ]
    peers = [p for p in PEERS if p in result["settings"]["impls"]]
    head = ["cell", "T x B x H", "mode", "seqengine ms", "GFLOP/s", "% peak"]
    head += [f"{p} ms (ratio)" for p in peers] + ["checks"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result["cases"]:
        sh = c["shape"]
        se = c["impls"].get("seqengine", {})
        row = [c["cell"], f"{sh['T']}x{sh['B']}x{sh['H']}" + (f" (D={sh['D']})" if sh["D"] != sh["H"] else "")
               + (f" {sh['label']}" if sh.get("label") else ""), c["mode"],
               _ms(se.get("median_s")), f"{se['gflops']:.3g}" if "gflops" in se else "-",
               _pct(se.get("peak_fraction"))]
        for p in peers:
            e = c["impls"].get(p, {})
            if e.get("median_s") is not None:
                row.append(f"{_ms(e['median_s'])} ({e['ratio']:.2f})" if "ratio" in e else _ms(e["median_s"]))
            elif e.get("status") == "unsupported":
                row.append("n/a")
            else:
                row.append(e.get("status") or "-")
        checks = [e["check"] for n, e in c["impls"].items() if n != "seqengine" and "check" in e]
        row.append("all passed" if checks and all(k["passed"] for k in checks)
                   else ("none" if not checks else "FAILED: " + ", ".join(
                       n for n, e in c["impls"].items() if e.get("status") == "failed-check")))
        lines.append("| " + " | ".join(row) + " |")

    if result.get("compile"):
        lines += ["", "## Compile and start-up time (fresh processes)", "",
                  "Empty cache: `SEQENGINE_CACHE_DIR` pointing to a new empty folder; warm cache: a second process "
                  "on the folder the first one filled. compile = first call minus steady state; "
                  "start-up = the same with a warm cache.", "",
                  "| cell | shape | empty cache: first fwd+bwd s | compile fwd+bwd s | compile forward (infer) s "
                  "| warm cache: first fwd+bwd s | start-up fwd+bwd s | steady fwd+bwd ms | process wall s (empty / warm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in result["compile"]:
            cold, warm, sh = c["empty_cache"], c["warm_cache"], c["shape"]
            if "compile_train_s" not in c:
                lines.append(f"| {c['cell']} | | error: {(cold.get('error') or warm.get('error'))[:200]!r} |"
                             " | | | | | |")
                continue
            lines.append(f"| {c['cell']} | {sh['T']}x{sh['B']}x{sh['H']} | {cold['first_train_step_s']:.2f} | "
                         f"{c['compile_train_s']:.2f} | {c['compile_forward_s']:.2f} | "
                         f"{warm['first_train_step_s']:.3f} | {c['startup_train_s']:.3f} | "
                         f"{1e3 * warm['steady_train_step_s']:.1f} | "
                         f"{cold['process_wall_s']:.1f} / {warm['process_wall_s']:.1f} |")

    mem = result.get("memory")
    if mem:
        sh = mem["shape"]
        lines += ["", f"## Memory: one {mem['cell']} training step at T={sh['T']}, B={sh['B']}, D={sh['D']}, "
                  f"H={sh['H']}", ""]
        se = mem.get("seqengine", {})
        if "error" in se:
            lines.append(f"seqengine memory probe failed: {se['error'][:300]}")
        else:
            need = se["needed"]
            lines += [
                f"- Needed: parameters {_mib(need['params_bytes'])} + saved activations "
                f"{_mib(need['saved_activations_bytes'])} ({need['saved_activations_formula']}) = "
                f"{_mib(need['params_plus_saved_bytes'])}; besides, gradients {_mib(need['grads_bytes'])}, "
                f"outputs y and dx {_mib(need['outputs_bytes'])}, inputs x and dy {_mib(need['inputs_bytes'])} "
                "(allocated before the step).",
                f"- seqengine, tracemalloc peak during the step (NumPy allocations): "
                f"{_mib(se.get('tracemalloc_peak_bytes'))}; peak RSS increase over the step: "
                f"{_mib(se['peak_rss_increase_bytes'])}" + (" (masked by an earlier peak)" if se.get("rss_peak_masked")
                                                         else "") + f"; tape kept by forward: {_mib(se.get('tape_bytes'))}.",
            ]
            if se.get("tracemalloc_peak_bytes"):
                lines.append(f"- Ratio tracemalloc peak / (parameters + saved activations): "
                             f"{se['tracemalloc_peak_bytes'] / need['params_plus_saved_bytes']:.2f}")
        tn = mem.get("torch-native")
        if tn and "error" not in tn:
            lines.append(f"- torch.nn.{mem['cell'].upper()} for comparison, peak RSS increase over the step: "
                         f"{_mib(tn['peak_rss_increase_bytes'])}" + (" (masked)" if tn.get("rss_peak_masked") else ""))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """Bar chart of the ratios (peer time / seqengine time); False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    peers = [p for p in PEERS if p in result["settings"]["impls"]]
    labels = [f"{c['cell']} {c['shape']['T']}x{c['shape']['B']}x{c['shape']['H']} {c['mode']}" for c in result["cases"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels)), 4.5))
    width = 0.8 / max(1, len(peers))
    for k, p in enumerate(peers):
        vals = [c["impls"].get(p, {}).get("ratio", float("nan")) for c in result["cases"]]
        ax.bar([i + k * width for i in range(len(labels))], vals, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("peer time / seqengine time (*-cuda: / seqengine-cuda)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=90, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(result: dict, out_dir: Path, want_plot: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(result, indent=1, default=str))
    paths["markdown"].write_text(markdown(result))
    if want_plot:
        png = out_dir / "results.png"
        if plot(result, png):
            paths["png"] = png
    return paths
