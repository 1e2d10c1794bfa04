"""Read the machine code of the generated CUDA kernels without a GPU: registers, spills and the loops.

    python benchmarks/cuda_sass.py lstm                       # every step kernel of a cell
    python benchmarks/cuda_sass.py lstm forward_train_seg0_kernel backward_seg0_kernel
    python benchmarks/cuda_sass.py --gemm 16x8                # the GEMM kernels of one block shape
    python benchmarks/cuda_sass.py lstm --keep /tmp/sass      # also keep the .ptx, .cubin and .sass files

Each kernel is compiled to PTX for compute capability 9.0 (`numba.cuda.compile_ptx`, as the PTX test),
then by ptxas (from `nvidia-cuda-nvcc-cu12`, which `seqengine[cuda]` installs) for sm_90: registers and
spills. With nvdisasm on PATH or installed (`pip install nvidia-cuda-nvdisasm`, not a dependency), the
SASS is read too: for each loop (a backward branch), its instructions and how many are global loads
(LDG), shared loads (LDS), multiply-adds (FFMA/DFMA); the hottest loops first. Session 7's numbers in
benchmarks/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

CC = (9, 0)


def tool(name: str) -> str | None:
    """`name` on PATH, or in a pip-installed NVIDIA wheel (nvidia/*/bin) of this Python."""
    found = shutil.which(name)
    if found:
        return found
    import site
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        for path in sorted(glob.glob(os.path.join(root, "nvidia", "*", "bin", name))):
            return path
    return None


INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL = re.compile(r"^(\.L_x_\d+):")


def loops(sass: str) -> list[dict]:
    """Per backward branch of an nvdisasm listing: the instructions from its target to it, by kind."""
    code, labels, pending = [], {}, []
    for line in sass.splitlines():
        label = LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        m = INSTRUCTION.search(line)
        if m:
            address = int(m.group(1), 16)     # restarts at 0 in each function; labels are unique
            for name in pending:
                labels[name] = address
            pending = []
            code.append((address, m.group(2).strip()))
    out = []
    for i, (address, text) in enumerate(code):
        branch = re.search(r"\bBRA `?\(?(\.L_x_\d+|0x[0-9a-f]+)", text)
        if not branch:
            continue
        target = labels.get(branch.group(1)) if branch.group(1).startswith(".L") else int(branch.group(1), 16)
        if target is None or target >= address:
            continue
        start = max((j for j in range(i + 1) if code[j][0] == target), default=None)   # nearest one above
        if start is None:
            continue
        body = [t for _, t in code[start:i + 1]]

        def count(op):
            return sum(1 for t in body if re.match(r"(@!?P\d+\s+)?" + op, t))
        out.append(dict(start=hex(target), instructions=len(body), LDG=count("LDG"), LDS=count("LDS"),
                        FMA=count("FFMA") + count("DFMA")))
    return sorted(out, key=lambda loop: -(loop["FMA"] + loop["LDG"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cell", nargs="?", help="a registered cell (its step kernels)")
    ap.add_argument("kernels", nargs="*", help="kernel names (default: every step kernel of the cell)")
    ap.add_argument("--gemm", help="the GEMM kernels of block shape THREADSxREGS (e.g. 16x8)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--loops", type=int, default=3, help="loops shown per kernel")
    ap.add_argument("--keep", help="folder for the .ptx, .cubin and .sass files")
    opts = ap.parse_args()
    if not opts.cell and not opts.gemm:
        ap.error("name a cell or --gemm")

    import numba.cuda.dispatcher
    from numba import cuda
    # numba-cuda compiles the grid barrier for the current GPU's compute capability (none here)
    numba.cuda.dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=CC)
    from seqengine.backends.cuda.config import STEP_MAX_THREADS
    from seqengine.backends.cuda.emit import signature_types
    jobs = []   # (name, python function, argument types, launch bound)
    if opts.gemm:
        from seqengine.backends.cuda.gemm import GEMM_SIGNATURE, gemm_kernel_name, gemm_module
        ts, regs = (int(v) for v in opts.gemm.split("x"))
        module = gemm_module(opts.dtype, ts, regs)
        for trans_a in (False, True):
            for trans_b in (False, True):
                name = gemm_kernel_name(trans_a, trans_b)
                jobs.append((name, getattr(module, name).py_func, signature_types(GEMM_SIGNATURE, opts.dtype), None))
    if opts.cell:
        import seqengine as se
        from seqengine.backends.cuda import generated_module
        _, module = generated_module(se.get_cell(opts.cell), opts.dtype)
        signatures = module.KERNELS["signatures"]
        for name in opts.kernels or module.KERNELS["step_kernels"]:
            bound = STEP_MAX_THREADS if name in module.KERNELS["step_kernels"] else None
            jobs.append((name, getattr(module, name).py_func, signature_types(signatures[name], opts.dtype), bound))

    ptxas, nvdisasm = tool("ptxas"), tool("nvdisasm")
    if ptxas is None:
        sys.exit("ptxas not found: pip install 'seqengine[cuda]' (nvidia-cuda-nvcc-cu12)")
    if nvdisasm is None:
        print("(nvdisasm not found: registers and spills only; pip install nvidia-cuda-nvdisasm for the loops)")
    folder = Path(opts.keep or tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    for name, func, types, bound in jobs:
        ptx, _ = cuda.compile_ptx(func, types, cc=CC, launch_bounds=bound)
        base = folder / name
        base.with_suffix(".ptx").write_text(ptx)
        run = subprocess.run([ptxas, "-arch=sm_90", "-c", "-v", "-O3", str(base.with_suffix(".ptx")),
                              "-o", str(base.with_suffix(".cubin"))], capture_output=True, text=True, check=True)
        registers = re.findall(r"Used (\d+) registers", run.stderr)
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", run.stderr)
        print(f"{name}: {registers[-1]} registers, spills (stores, loads) {spills[-1]} bytes")
        if nvdisasm:
            sass = subprocess.run([nvdisasm, "-c", str(base.with_suffix(".cubin"))], capture_output=True, text=True,
                                  check=True).stdout
            base.with_suffix(".sass").write_text(sass)
            for loop in loops(sass)[:opts.loops]:
                print(f"    loop at {loop['start']}: {loop['instructions']} instructions, {loop['LDG']} LDG, "
                      f"{loop['LDS']} LDS, {loop['FMA']} FMA")
    if opts.keep:
        print(f"files in {folder}")


if __name__ == "__main__":
    main()
