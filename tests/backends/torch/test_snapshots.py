"""Update mode's snapshots (backends/torch/snapshots.py): one buffer per group, refilled at every step."""

import torch

from gradsmooth.backends.torch.snapshots import Snapshots


def test_a_buffer_per_group_for_its_capacity_and_the_present_members_take_the_first_rows():
    snaps = Snapshots()
    shards = [torch.randn(3, 2) for _ in range(4)]
    rows = snaps.buffer(0, shards[:2], capacity=4)
    assert rows.shape == (2, 6) and snaps.nbytes == 4 * 6 * 4
    assert snaps.buffer(0, shards, capacity=4).data_ptr() == rows.data_ptr()  # kept across steps
    Snapshots.take(list(snaps.buffer(0, shards, 4).unbind(0)), shards)
    torch.testing.assert_close(snaps.buffer(0, shards, 4), torch.stack([s.view(-1) for s in shards]))
    snaps.clear()
    assert snaps.nbytes == 0


def test_take_reads_the_parameters_as_they_are_at_that_moment():
    p = torch.nn.Parameter(torch.ones(4))
    snaps = Snapshots()
    rows = list(snaps.buffer(0, [p], 1).unbind(0))
    p.data.mul_(3.0)  # a write torch's version counters do not see
    Snapshots.take(rows, [p.detach()])
    assert rows[0].tolist() == [3.0] * 4


def test_a_buffer_is_made_again_where_the_parameters_dtype_device_or_size_changed():
    snaps = Snapshots()
    half = [torch.ones(6, dtype=torch.bfloat16) for _ in range(3)]
    assert snaps.buffer(0, half, 3).dtype == torch.bfloat16
    full = [t.float() for t in half]  # model.float() after a step
    rows = snaps.buffer(0, full, 3)
    assert rows.dtype == torch.float32 and rows.shape == (3, 6)
    assert snaps.buffer(0, [torch.ones(10) for _ in range(3)], 3).shape == (3, 10)
    assert snaps.buffer(0, [torch.ones(10) for _ in range(5)], 3).shape == (5, 10)  # more members than planned
    assert snaps.nbytes == 5 * 10 * 4  # the old buffers are gone
