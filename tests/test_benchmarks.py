"""The benchmark suite cannot rot: asv finds it, and a few benchmarks run once at small sizes."""

import shutil
import subprocess

import pytest

from benchmarks import bench_kernels, bench_smoothing, bench_step, overhead  # noqa: I001
from benchmarks.common import BACKENDS, available, skip_slow_on_cpu

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv is not installed")
def test_asv_check_finds_no_problems():
    proc = subprocess.run(["asv", "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "No problems found" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_smoothing_benchmark_runs_once(backend):
    if not available(backend):
        pytest.skip(f"{backend} is not installed")
    bench = bench_smoothing.Smoothing()
    params = (backend, 6, 10**4, 3, "renormalize")
    bench.setup(*params)
    bench.time_smooth(*params)
    assert bench.track_ratio_to_axpy_floor(*params) > 0


def test_step_benchmarks_run_once(monkeypatch):
    pytest.importorskip("torch")
    small = bench_step.gpt2_shapes(blocks=3, d=256, vocab=50)  # MLP weights large enough to be compiled
    monkeypatch.setattr(bench_step, "gpt2_shapes", lambda *a, **k: small)
    monkeypatch.setenv("GRADSMOOTH_BENCH_CPU_MUON", "1")  # small shapes: Muon is quick here
    bench = bench_step.TorchStep()
    for params in (("adamw-fused", "update", "default"), ("muon+adamw", "gradient", "eager")):  # eager: out of asv's grid, still a valid setup
        bench.setup(*params)
        bench.time_wrapped_step(*params)
        assert bench.track_overhead_ratio(*params) > 0
    native = bench_step.NativeStep()
    native.setup()
    native.time_native_step()
    assert native.track_ratio_to_fused_adamw() > 0
    if available("mlx"):
        mlx_bench = bench_step.MLXStep()
        mlx_bench.setup("adamw", "update")
        assert mlx_bench.track_overhead_ratio("adamw", "update") > 0


def test_every_registered_kernel_has_a_kernel_benchmark(monkeypatch):
    pytest.importorskip("torch")
    from gradsmooth.backends.torch import dispatch

    monkeypatch.setitem(bench_kernels.SHAPES, "gpt2-small-mlp", (4, (64, 32)))
    names, kinds, shapes = bench_kernels.Kernels.params
    assert set(names) == {k.name for k, _ in dispatch.KERNELS} and set(kinds) == set(bench_kernels.KINDS)
    ran = 0
    for kernel, served in dispatch.KERNELS:
        for kind in bench_kernels.KINDS:
            bench = bench_kernels.Kernels()
            try:
                bench.setup(kernel.name, kind, "gpt2-small-mlp")
            except NotImplementedError:
                assert kind not in served or kernel.refuses(kind, __import__("torch").float32,
                                                            __import__("torch").device("cpu"), 64 * 32, True)
                continue
            assert bench.track_ratio_to_fused_adamw(kernel.name, kind, "gpt2-small-mlp") > 0
            ran += 1
    assert ran >= len(bench_kernels.KINDS)  # the eager kernel serves every kind, at least


def test_muon_steps_are_skipped_on_a_cpu_unless_asked_for(monkeypatch):
    monkeypatch.delenv("GRADSMOOTH_BENCH_CPU_MUON", raising=False)
    with pytest.raises(NotImplementedError, match="GRADSMOOTH_BENCH_CPU_MUON=1"):
        skip_slow_on_cpu("muon+adamw", on_cpu=True)
    skip_slow_on_cpu("muon+adamw", on_cpu=False)
    skip_slow_on_cpu("adamw-fused", on_cpu=True)
    monkeypatch.setenv("GRADSMOOTH_BENCH_CPU_MUON", "1")
    skip_slow_on_cpu("muon+adamw", on_cpu=True)
    if available("torch") and bench_step.torch_device() == "cpu":
        monkeypatch.delenv("GRADSMOOTH_BENCH_CPU_MUON")
        with pytest.raises(NotImplementedError):  # asv reports the combination as skipped
            bench_step.TorchStep().setup("muon+adamw", "update", "eager")


def test_overhead_report_prints_the_table(capsys):
    pytest.importorskip("torch")
    assert overhead.main(["--blocks", "3", "--dim", "32", "--repeats", "1", "--training-repeats", "1", "--no-memory", "--context", "8",
                          "--vocab", "64"]) == 0
    out = capsys.readouterr().out
    assert out.index("whole training step (forward, backward, optimizer)") < out.index("optimizer step alone")
    assert "| ratio, passes pooled |" in out
    for variant in ("wrapper, update mode", "wrapper, gradient mode", "SmoothedAdamW"):
        assert f"| {variant} |" in out
    for label, _ in overhead.TORCH_VARIANTS:
        assert f"| torch adamw-fused, {label} | update |" in out and f"| torch adamw-fused, {label} | gradient |" in out
    assert "| torch SmoothedAdamW (vs fused AdamW) | update |" in out
    assert "| numpy core | smooth() |" in out
    assert overhead.extra_memory("torch", "gradient", 3, 64) < 1.0
    # SmoothedAdamW holds nothing beyond AdamW's own state: no snapshot
    assert overhead.extra_memory("torch", "update", 3, 64, overhead.NATIVE) < 0.5


def test_the_training_step_is_timed_in_two_phases_and_the_passes_pooled():
    pytest.importorskip("torch")
    from benchmarks import bench_training

    rows = bench_training.training_rows(blocks=2, dim=32, batch=1, context=8, repeats=2, vocab=64)
    assert [r["variant"] for r in rows] == list(bench_training.VARIANTS)
    for r in rows:
        assert 0 < r["optimizer_ms"] < r["step_ms"] and 0 < r["passes_ms"]
        assert r["pooled_ratio"] == pytest.approx((r["passes_ms"] + r["optimizer_ms"]) / (r["passes_ms"] + r["base_optimizer_ms"]))


def test_the_gpu_script_runs_dry_on_a_cpu(tmp_path):
    """benchmarks/gpu.sh --dry: every step of the CUDA script (tests, overhead report, bfloat16)
    at toy sizes on the CPU, so the script is known to work before a GPU is lent."""
    pytest.importorskip("torch")
    import os
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, GPU_REPORT_DIR=str(tmp_path / "report"), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.startswith("# GPU report (DRY RUN on the CPU, toy sizes)") and " passed" in report
    assert "whole training step" in report and "(torch parameters in bfloat16)" in report
    assert "| torch SmoothedAdamW (vs fused AdamW) | update |" in report
    refused = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=root, env=env, capture_output=True, text=True)
    import torch

    if not torch.cuda.is_available():
        assert refused.returncode == 2 and "no CUDA device here" in refused.stderr


def test_first_step_times_a_step_and_says_which_kernels_ran(capsys):
    pytest.importorskip("torch")
    from benchmarks import first_step

    child = first_step._child("demo", "native")  # one variant in this process; main runs each in fresh ones
    assert child["first_ms"] > 0 and child["later_ms"] > 0
    from gradsmooth.backends.torch.inductor import compiler_missing

    missing = compiler_missing("cpu")  # no C++ compiler: the eager kernels, and the plan says why
    assert child["paths"] == (["blocked"] if missing is None else [f"eager ({missing})"])
    row = {"model": "demo", "variant": "SmoothedAdamW", "cold_first_ms": 1200.0, "warm_first_ms": 300.0,
           "later_ms": 4.5, "paths": "blocked"}
    assert first_step.table([row]).splitlines()[2] == "| the demo's ViT (8 blocks, width 64) | SmoothedAdamW | 1.2 | 0.30 | 4.5 | blocked |"
    with pytest.raises(SystemExit):
        first_step.main(["--models", "demo,bert"])
    assert "--models should name demo, gpt2-small but names: bert" in capsys.readouterr().err


def test_repeated_runs_print_every_run_and_count_the_targets(capsys):
    pytest.importorskip("torch")
    from benchmarks import repeated

    rows = repeated.measure(repeated.pairs(repeated.gpt2_shapes(2, 32, vocab=64)), runs=2, repeats=1)
    assert len(rows) == 2 and all(list(r) == list(repeated.TARGETS) and all(v > 0 for v in r.values()) for r in rows)
    fake = [dict.fromkeys(repeated.TARGETS, 1.05), dict.fromkeys(repeated.TARGETS, 1.5)]
    lines = repeated.table(fake).splitlines()
    assert lines[0] == "| run | default, update mode | default, gradient mode | SmoothedAdamW |"
    assert lines[2] == "| 1 | 1.05 | 1.05 | 1.05 |"
    assert lines[-1] == ("| 2 runs | 1.05–1.50, median 1.27; ≤ 1.6 in 2 of 2 | 1.05–1.50, median 1.27; ≤ 1.3 in 1 of 2 "
                         "| 1.05–1.50, median 1.27; ≤ 1.1 in 1 of 2 |")
    # a column without a target: its range and median alone
    assert repeated.table([{"x": 1.0}, {"x": 1.2}], {}, of=" / base").splitlines()[0] == "| run | x / base |"
    assert repeated.table([{"x": 1.0}, {"x": 1.2}], {}).splitlines()[-1] == "| 2 runs | 1.00–1.20, median 1.10 |"
    with pytest.raises(SystemExit):
        repeated.main(["--runs", "0"])
    assert "--runs should be >= 1 but is: 0" in capsys.readouterr().err


def test_the_mlx_native_probe_equals_the_wrapper_in_update_mode(capsys):
    """The probe timed against the MLX wrapper computes the same step (so its timing means
    something): two steps equal GradientSmoothing(AdamW) in update mode."""
    pytest.importorskip("mlx.core")
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten

    from benchmarks import mlx_native
    from gradsmooth.backends.mlx import GradientSmoothing

    shapes = mlx_native.gpt2_shapes(3, 16, vocab=32)
    run, params = mlx_native.native_step(shapes)
    rng = np.random.default_rng(0)
    init = {k: mx.array(rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}
    grads = tree_unflatten([(k, mx.array(rng.standard_normal(s, dtype=np.float32) * 1e-3)) for k, s in shapes.items()])
    opt = GradientSmoothing(optim.AdamW(learning_rate=mlx_native.LR, weight_decay=mlx_native.WEIGHT_DECAY), mode="update")
    tree = tree_unflatten(list(init.items()))
    for _ in range(2):
        run()
        tree = opt.apply_gradients(grads, tree)
    wrapped = dict(tree_flatten(tree))
    assert set(wrapped) == set(params())
    for k, p in params().items():
        assert np.allclose(np.array(p), np.array(wrapped[k]), rtol=1e-6, atol=1e-8), k
    assert not np.allclose(np.array(params()["h.0.mlp.c_fc.weight"]), np.array(init["h.0.mlp.c_fc.weight"]))
    mlx_native.main(["--blocks", "2", "--dim", "16", "--runs", "1", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("| run | wrapper, update mode / compiled AdamW | wrapper, gradient mode / compiled AdamW "
                      "| native probe / compiled AdamW |") and out[-1].startswith("| 1 runs | ")
    assert "; ≤ 1.5 in " in out[-1] and out[-1].count("; ≤") == 2  # the probe has no target
    with pytest.raises(SystemExit):
        mlx_native.main(["--runs", "0"])
    assert "--runs should be >= 1 but is: 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--repeats", "0"], "--repeats should be >= 1 but is: 0"),
                                           (["--training-repeats", "-1"], "--training-repeats should be >= 1 but is: -1"),
                                           (["--dim", "0"], "--dim should be >= 1 but is: 0")])
def test_the_reports_refuse_a_count_below_one_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        overhead.main(argv)
    assert message in capsys.readouterr().err


def test_the_kernel_table_times_every_registered_kernel_beside_the_eager_one(monkeypatch, capsys):
    pytest.importorskip("torch")
    from benchmarks import kernels

    monkeypatch.setitem(bench_kernels.SHAPES, "gpt2-small-mlp", (4, (64, 32)))
    assert kernels.main(["--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for kind in bench_kernels.KINDS:
        assert f"| {kind} | eager |" in out
    from gradsmooth.backends.torch.inductor import compiler_missing

    if compiler_missing("cpu") is None:
        assert "| adamw | blocked |" in out
    with pytest.raises(SystemExit):
        kernels.main(["--repeats", "0"])
