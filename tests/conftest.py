"""Suite-wide test settings."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    """One intra-op thread per test worker: the suite's tensors are tiny, and OpenMP threads
    oversubscribing a shared 2-core machine make small ops 10-100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
