"""Fixtures of the experiments' tests."""

import pytest


@pytest.fixture
def one_thread():
    """torch on one thread for the test, as the published runs are, restored after: the small
    models' many short operations are slow with two threads on a busy machine (waiting threads)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
