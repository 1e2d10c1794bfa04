"""The benchmark runner's smoke run: it completes, writes its files, and every peer agrees with seqengine.

No timing is asserted (CI machines are shared and noisy); the correctness checks are.
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from seqengine.bench import main  # noqa: E402
from seqengine.bench import peers, runner  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = main(["--quick", "--no-plot", "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def test_quick_run_succeeds_and_writes_files(quick_run):
    status, out, result = quick_run
    assert status == 0
    assert (out / "results.md").read_text().startswith("# seqengine benchmark")
    assert result["schema"] == "seqengine-bench/1" and result["quick"] is True
    for key in ("machine", "gemm_peak", "settings", "cases", "compile", "memory"):
        assert key in result
    m = result["machine"]
    assert m["cores_available"] >= 1 and m["numba_threading_layer"] and m["versions"]["numba"]
    assert any(p["user_api"] == "blas" for p in m["thread_pools"])
    assert result["gemm_peak"]["peak_gflops"] > 0


def test_grid_is_complete_and_every_peer_passed_its_check(quick_run):
    _, _, result = quick_run
    seen = {(c["cell"], c["shape"]["T"], c["shape"]["B"], c["mode"]) for c in result["cases"]}
    assert seen == {("lstm", 10, 4, "forward"), ("lstm", 10, 4, "train"), ("lstm", 30, 1, "forward"),
                    ("gru", 10, 4, "forward"), ("gru", 10, 4, "train"), ("gru", 30, 1, "forward")}
    checked = 0
    for case in result["cases"]:
        impls = case["impls"]
        assert impls["seqengine"]["status"] == "ok"
        for name, e in impls.items():
            if name == "numpy" and case["mode"] == "train":
                assert e["status"] == "unsupported"
                continue
            assert e["status"] == "ok", (case["cell"], case["mode"], name, e)
            assert len(e["times_s"]) == result["settings"]["repeats"] and e["median_s"] > 0
            assert e["gflops"] > 0 and 0 < e["peak_fraction"]
            if name != "seqengine":
                chk = e["check"]
                assert chk["passed"] and chk["max_rel_err"] <= chk["tolerance"] == runner.TOLERANCE[case["mode"]]
                assert not chk["missing_arrays"] and chk["arrays_compared"] >= 2
                assert e["ratio"] == pytest.approx(e["median_s"] / impls["seqengine"]["median_s"])
                checked += 1
        if case["mode"] == "train":    # outputs, dx, dstate0 and every parameter's gradient were compared
            n_params = 16 if case["cell"] == "lstm" else 12
            n_states = 2 if case["cell"] == "lstm" else 1
            assert impls["torch-native"]["check"]["arrays_compared"] == 1 + 2 * n_states + 1 + n_params
    assert checked == 16       # lstm and gru: (native, loop, numpy) x 2 forward cases + (native, loop) x 1 train case


def test_compile_and_memory_probes(quick_run):
    _, _, result = quick_run
    (comp,) = result["compile"]
    assert "error" not in comp["empty_cache"] and "error" not in comp["warm_cache"], comp
    assert comp["empty_cache"]["first_train_step_s"] > comp["warm_cache"]["first_train_step_s"]
    mem = result["memory"]["seqengine"]
    assert "error" not in mem, mem
    assert mem["tracemalloc_peak_bytes"] > 0 and mem["needed"]["params_plus_saved_bytes"] > 0


def test_a_wrong_peer_fails_its_check():
    ref = {"y": np.ones((3, 2, 4), np.float32), "grad_W": np.ones((4, 4), np.float32)}
    bad = {"y": ref["y"] * (1 + 1e-3), "grad_W": ref["grad_W"]}
    assert not runner.compare(ref, bad, runner.TOLERANCE["forward"])["passed"]
    assert not runner.compare(ref, {"y": ref["y"]}, 1.0)["passed"]                 # a missing gradient fails
    assert runner.compare(ref, dict(ref), 0.0)["passed"]


@pytest.mark.parametrize("cell", ["lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"])
def test_hand_written_peers_match_seqengine(cell):
    sh = runner.Shape(5, 3, 6, 4)                      # D != H catches transposed weights
    params, x, state0, dy = runner._data(cell, sh)
    ref = peers.make_impl("seqengine", cell, params, x, state0, dy)
    for mode, tol in runner.TOLERANCE.items():
        expected = ref.forward() if mode == "forward" else ref.train_step()
        for name in ("torch-native", "torch-loop", "numpy"):
            if not peers.supports(name, cell, mode):
                continue
            impl = peers.make_impl(name, cell, params, x, state0, dy)
            got = impl.forward() if mode == "forward" else impl.train_step()
            chk = runner.compare(expected, got, tol)
            assert chk["passed"], (name, mode, chk)


def test_gemm_flop_count():
    # forward 2*T*B*(D+H)*G*H with G gate blocks; a training step is three times that
    assert runner.gemm_flops("lstm", 10, 4, 8, 16, "forward") == 2 * 10 * 4 * (8 + 16) * 4 * 16
    assert runner.gemm_flops("gru_cho", 10, 4, 8, 16, "train") == 3 * 2 * 10 * 4 * (8 + 16) * 3 * 16
    assert runner.gemm_flops("rnn", 1, 1, 2, 2, "forward") == 2 * (2 + 2) * 2


def test_bad_arguments_and_missing_gpu_backend(capsys, tmp_path, monkeypatch):
    assert main(["--cells", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown cell" in capsys.readouterr().err
    assert main(["--shapes", "10x4", "--out", str(tmp_path)]) == 2
    import sys
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "seqengine.backends.cuda", None)       # import fails
    assert main(["--gpu", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the CUDA backend cannot run here (ModuleNotFoundError" in err and "seqengine[cuda]" in err


def test_gpu_mode_without_a_gpu_names_what_is_missing(capsys, tmp_path):
    import os
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator stands in for a GPU")
    from seqengine.backends.cuda import CudaUnavailableError, require_cuda
    try:
        require_cuda()
    except CudaUnavailableError as e:
        missing = str(e)
    else:
        pytest.skip("a GPU is present")
    assert main(["--gpu", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "CudaUnavailableError" in err and missing[:40] in err


def test_report_has_a_column_for_every_gpu_peer(tmp_path):
    """The GPU run's table (benchmarks/results-gpu, recorded on an H200) shows the cuDNN and the
    hand-written-loop peers beside seqengine-cuda, with their medians and ratios to seqengine-cuda."""
    import json
    import pathlib

    from seqengine.bench import report
    recorded = pathlib.Path(__file__).parent.parent / "benchmarks" / "results-gpu" / "results.json"
    result = json.loads(recorded.read_text())
    table = report.write(result, tmp_path, want_plot=False)["markdown"].read_text()
    header = next(line for line in table.splitlines() if line.startswith("| cell |"))
    for peer in ("seqengine-cuda", "torch-native-cuda", "torch-loop-cuda"):
        assert f"{peer} ms (ratio)" in header
    lstm = next(line for line in table.splitlines() if line.startswith("| lstm | 100x64x256 | train |"))
    case = next(c for c in result["cases"] if c["cell"] == "lstm" and c["mode"] == "train"
                and (c["shape"]["T"], c["shape"]["B"], c["shape"]["H"]) == (100, 64, 256))
    cells = [f"{case['impls'][p]['median_s'] * 1e3:.2f} ({case['impls'][p]['ratio']:.2f})"
             for p in ("seqengine-cuda", "torch-native-cuda", "torch-loop-cuda")]
    assert "| " + " | ".join(cells) + " |" in lstm
    assert cells[0].startswith("6.23 ")   # the run's printed median (RESULTS.md, session 8)
    # the torch GPU peers' ratios are against seqengine-cuda: cuDNN 5.36 ms / 6.23 ms
    native = case["impls"]["torch-native-cuda"]
    assert native["ratio"] == pytest.approx(native["median_s"] / case["impls"]["seqengine-cuda"]["median_s"])


def test_gpu_peers_are_compared_with_seqengine_on_the_same_device():
    """The torch GPU peers' ratio is against seqengine-cuda (both on the GPU); seqengine-cuda's own
    and the CPU peers' against the CPU seqengine."""
    from seqengine.bench.runner import ratio_reference
    assert ratio_reference("torch-native-cuda") == ratio_reference("torch-loop-cuda") == "seqengine-cuda"
    for cpu_side in ("seqengine-cuda", "torch-native", "torch-loop", "numpy"):
        assert ratio_reference(cpu_side) == "seqengine"
