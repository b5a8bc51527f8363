"""Shared pieces of the fine-tuning technique tests: one torch thread (two threads on a shared
2-core machine made the UNet ~10x slower) and the opt-in toy runs. The module-scoped ``pipe``
fixture is in conftest.py."""

import os

import pytest
import torch

# The toy budgets of these runs are not validated on the retrained toy model (they were written
# against the first, below-bar one), and each takes minutes: opt-in.
opt_in = pytest.mark.skipif(os.environ.get("EVALLEARN_TOY_FINETUNE") != "1",
                            reason="toy fine-tuning erasure runs are opt-in (EVALLEARN_TOY_FINETUNE=1)")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

