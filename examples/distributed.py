"""Gradient Smoothing under torch.distributed: DDP, FSDP2 or pipeline stages.

    torchrun --nproc-per-node 2 examples/distributed.py --mode fsdp       # or ddp, pipeline

Runs on CPUs with gloo, or on GPUs with nccl when CUDA is there. Each mode trains a small
stack of blocks for a few steps with AdamW + Gradient Smoothing and prints the loss on rank 0.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from gradsmooth.backends.torch import GradientSmoothing, PipelineStages


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.out(torch.relu(self.fc(self.norm(x))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("ddp", "fsdp", "pipeline"), default="fsdp")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(args.dim) for _ in range(args.blocks)]).to(device)

    pipeline = None
    if args.mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif args.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for block in model:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:  # this rank holds a contiguous range of the blocks: one pipeline stage
        per_stage = args.blocks // world
        first = rank * per_stage
        model = nn.Sequential(*list(model)[first : first + per_stage])
        pipeline = PipelineStages(num_blocks=args.blocks, first_block=first)

    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model, window=3, pipeline=pipeline)
    if rank == 0:
        print(opt.plan)
    for step in range(args.steps):
        x = torch.randn(16, args.dim, device=device)
        opt.zero_grad()
        # a stand-in loss: in a real pipeline the schedule (torch.distributed.pipelining) runs the
        # forward and backward across stages; each stage then calls opt.step() on its blocks
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    # every rank done before any tears its group down: without the barrier a rank that finishes
    # first could leave the other hanging in its teardown (seen 1 run in 5 on a loaded 2-core CPU)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
