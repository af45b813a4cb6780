"""Data parallel, FSDP2, checkpointing and pipeline stages: 2 ranks with gloo on the CPU,
spawned here, against single-process runs."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = pathlib.Path(__file__).parent
spec = importlib.util.spec_from_file_location("distributed_worker", HERE / "distributed_worker.py")
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)


def spawn(scenario, tmp_path, world=2):
    init, out = tmp_path / "init", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), scenario, str(rank), str(world),
                               str(init), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return out


def close(a, b):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9, msg=k)


def single_process(native=False):
    model = worker.make_net()
    opt = worker.make_opt(model, native)
    worker.train(model, opt, worker.STEPS)
    return worker.full_params(model)


# "native": SmoothedAdamW, which computes and smooths the update in one pass, in place of the wrapper
OPTIMIZERS = pytest.mark.parametrize("optimizer", ["wrapper", "native"])


@OPTIMIZERS
def test_ddp_equals_one_process_with_the_global_batch_and_replicas_agree(tmp_path, optimizer):
    native = optimizer == "native"
    out = spawn("ddp" + "-native" * native, tmp_path)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    close(ranks[0], single_process(native))


@OPTIMIZERS
def test_fsdp2_smooths_local_shards_and_equals_one_process(tmp_path, optimizer):
    native = optimizer == "native"
    out = spawn("fsdp" + "-native" * native, tmp_path)
    close(torch.load(f"{out}.0"), single_process(native))


@pytest.mark.parametrize("kind, optimizer", [("sharded", "wrapper"), ("full", "wrapper"), ("sharded", "native")])
def test_fsdp2_checkpoint_with_dcp_resumes_the_same_trajectory(tmp_path, kind, optimizer):
    native = optimizer == "native"
    out = spawn("fsdp-checkpoint" + ("-full" if kind == "full" else "") + "-native" * native, tmp_path)
    saved = torch.load(out)
    assert saved["step_count"] == ({10.0} if native else 10)  # SmoothedAdamW: torch's per-parameter steps
    for k in saved["uninterrupted"]:
        assert torch.equal(saved["uninterrupted"][k], saved["resumed"][k]), k
    close(saved["uninterrupted"], single_process(native))


@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("window", [3, 5])
def test_pipeline_stages_equal_smoothing_the_whole_stack(tmp_path, window, mode):
    out = spawn(f"pipeline-{window}-{mode}", tmp_path)
    got = {**torch.load(f"{out}.0"), **torch.load(f"{out}.1")}
    stack = worker.make_stack()
    opt = worker.GradientSmoothing(torch.optim.AdamW(stack.parameters(), lr=1e-2, weight_decay=0.1), stack,
                                   window=window, mode=mode)
    worker.pipeline_train(stack.layers, 0, opt, worker.STEPS)
    expected = dict(stack.named_parameters())
    assert set(got) == set(expected)
    close(got, {k: v.detach() for k, v in expected.items()})


def test_layouts_that_cannot_be_smoothed_shard_by_shard_are_refused(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    code = f"""
import sys; sys.path.insert(0, {str(HERE)!r})
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
import distributed_worker as w
dist.init_process_group("gloo", init_method="file://{tmp_path}/init", rank=0, world_size=1)
model = w.make_net()
mesh = init_device_mesh("cpu", (1,))
for i, layer in enumerate(model.layers):
    fully_shard(layer, mesh=mesh, shard_placement_fn=lambda p, i=i: Shard(1 if i == 3 and p.ndim == 2 else 0))
fully_shard(model, mesh=mesh)
try:
    w.make_opt(model)
except ValueError as err:
    print("REFUSED", err)
dist.destroy_process_group()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in proc.stdout and "must be sharded alike" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "pipeline"])
def test_the_torchrun_example_runs(mode):
    example = HERE.parents[2] / "examples" / "distributed.py"
    # --standalone: a free port for the rendezvous (the fixed default, 29500, can still be held
    # by an earlier run's socket)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(example),
                           "--mode", mode, "--steps", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 1: loss" in proc.stdout
