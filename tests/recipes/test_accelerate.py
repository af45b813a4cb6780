"""docs/recipes/accelerate.md runs as written: prepare() keeps the wrapper, accumulation steps
it once per window, and save_state / load_state reproduce the second epoch exactly."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradsmooth.backends.torch import GradientSmoothing


def test_accelerate_recipe(run_recipe, tmp_path):
    scope = run_recipe("accelerate")  # asserts the replayed epoch ends on the same parameters
    wrapper = scope["opt"].optimizer
    assert isinstance(wrapper, GradientSmoothing) and len(wrapper.plan.groups) == 9
    # 8 micro-batches an epoch, accumulated 2 by 2: 4 smoothed steps an epoch
    saved = torch.load(tmp_path / "accelerate-ckpt" / "optimizer.bin", weights_only=True)
    assert saved["param_groups"][0]["gradsmooth"]["step"] == 4
    assert wrapper.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 8
    assert scope["sched"].scheduler.last_epoch == 8
    # the second epoch moved the blocks on from the checkpoint: the replay's equality is not that of an idle model
    from safetensors.torch import load_file

    first_epoch = load_file(str(tmp_path / "accelerate-ckpt" / "model.safetensors"))
    final = scope["model"].state_dict()
    assert not torch.equal(first_epoch["model.layers.2.mlp.up_proj.weight"], final["model.layers.2.mlp.up_proj.weight"])
