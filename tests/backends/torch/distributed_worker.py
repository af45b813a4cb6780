"""One rank of the distributed tests (run as a script by test_distributed.py; gloo on the CPU).

    python distributed_worker.py SCENARIO RANK WORLD INIT_FILE OUT_FILE

Also imported by the test for the single-process runs it compares against.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

from gradsmooth.backends.torch import GradientSmoothing, PipelineStages, SmoothedAdamW

STEPS = 20
D = 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.attn = nn.Linear(D, D)
        self.mlp = nn.Linear(D, D)

    def forward(self, x):
        return x + self.mlp(torch.tanh(self.attn(self.norm(x))))


class Net(nn.Module):
    def __init__(self, n_blocks=6):
        super().__init__()
        self.embed = nn.Linear(5, D)
        self.layers = nn.ModuleList([Block() for _ in range(n_blocks)])
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def make_net(n_blocks=6):
    torch.manual_seed(0)
    return Net(n_blocks).double()


def global_batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 5, generator=g, dtype=torch.float64)


def make_opt(model, native=False, **kw):
    """The wrapper around AdamW, or (``native``) SmoothedAdamW with the same settings."""
    if native:
        return SmoothedAdamW(model, lr=1e-2, weight_decay=0.1, window=3, **kw)
    return GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), model, window=3, **kw)


def train(model, opt, steps, rank=0, world=1, start=0):
    for step in range(start, start + steps):
        x = global_batch(step).chunk(world)[rank]
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def full_params(model):
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()}


def stack_grads(step, n_blocks=8):
    """Gradients for every block of the pipeline test's 8-block stack, per step."""
    g = torch.Generator().manual_seed(step)
    return {f"{i}.{name}": torch.randn(p.shape, generator=g, dtype=torch.float64)
            for i in range(n_blocks) for name, p in Block().named_parameters()}


def pipeline_train(stage_blocks, first, opt, steps):
    for step in range(steps):
        grads = stack_grads(step)
        for i, block in enumerate(stage_blocks):
            for name, p in block.named_parameters():
                p.grad = grads[f"{first + i}.{name}"].clone()
        opt.step()


def make_stack(n_blocks=8):
    torch.manual_seed(0)
    model = nn.Module()
    model.layers = nn.ModuleList([Block() for _ in range(n_blocks)])
    return model.double()


def fsdp(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main(scenario, rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    native = scenario.endswith("-native")  # SmoothedAdamW instead of the wrapper
    scenario = scenario.removesuffix("-native")
    try:
        out = {}
        if scenario == "ddp":
            model = nn.parallel.DistributedDataParallel(make_net())
            opt = make_opt(model, native)
            train(model, opt, STEPS, rank, world)
            out = full_params(model.module)
        elif scenario.startswith("fsdp"):
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (world,))
            model = fsdp(make_net(), mesh)
            opt = make_opt(model, native)
            if scenario == "fsdp":
                train(model, opt, STEPS, rank, world)
            else:  # fsdp-checkpoint(-full): save at 10, go on; then a fresh model and optimizer resume from the save
                import copy

                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

                full = scenario.endswith("-full")
                options = StateDictOptions(full_state_dict=full)
                train(model, opt, 10, rank, world)
                model_sd, optim_sd = get_state_dict(model, opt, options=options)
                if full:  # the full (unsharded) state dicts, kept as a plain copy
                    saved = copy.deepcopy({"model": model_sd, "optim": optim_sd})
                else:
                    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=out_file + ".ckpt")
                train(model, opt, 10, rank, world, start=10)
                out["uninterrupted"] = full_params(model)
                model2 = fsdp(make_net(), mesh)
                opt2 = make_opt(model2, native)
                if full:
                    state = saved
                else:
                    model_sd, optim_sd = get_state_dict(model2, opt2)
                    state = {"model": model_sd, "optim": optim_sd}
                    dcp.load(state, checkpoint_id=out_file + ".ckpt")
                set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"],
                               options=options)
                # the wrapper's step counter; SmoothedAdamW's per-parameter steps (torch's layout)
                out["step_count"] = {float(st["step"]) for st in opt2.state.values()} if native else opt2._step_count
                train(model2, opt2, 10, rank, world, start=10)
                out["resumed"] = full_params(model2)
                return torch.save(out, out_file) if rank == 0 else None
            out = full_params(model)
        elif scenario.startswith("pipeline"):
            _, window, mode = scenario.split("-")
            stack = make_stack()
            per_stage = len(stack.layers) // world
            first = rank * per_stage
            stage = nn.Module()
            stage.layers = nn.ModuleList(stack.layers[first : first + per_stage])
            opt = GradientSmoothing(torch.optim.AdamW(stage.parameters(), lr=1e-2, weight_decay=0.1), stage,
                                    window=int(window), mode=mode, pipeline=PipelineStages(len(stack.layers), first))
            pipeline_train(stage.layers, first, opt, STEPS)
            out = {f"layers.{first + i}.{n}": p.detach().clone()
                   for i, block in enumerate(stage.layers) for n, p in block.named_parameters()}
        torch.save(out, f"{out_file}.{rank}")
        dist.barrier()  # every rank done before any tears down (as examples/distributed.py; not after an error)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
