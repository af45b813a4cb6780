"""Fixtures shared by the adapters' tests."""

import tempfile

import pytest


@pytest.fixture(scope="module")
def process_group():
    """One process as a one-stage pipeline's world (gloo on the CPU), for pipeline-stage tests
    that need torch.distributed but no second rank."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
        yield
        dist.destroy_process_group()
