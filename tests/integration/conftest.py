"""Shared by the integration tests that build DeepSpeed engines in the test process itself."""

import pytest

from cluster.distributed_session import distributed_session


@pytest.fixture(scope="module")
def single_process(one_thread):
    """A torch.distributed session of this process alone (world size 1), on one intra-op thread, for a module."""
    with distributed_session() as rendezvous:
        yield rendezvous
