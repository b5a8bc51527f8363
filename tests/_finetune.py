"""Shared pieces of the fine-tuning technique tests (the one-thread fixture also serves the toy
attack tests): one torch thread (two threads on a shared 2-core machine made the UNet ~10x
slower) and the opt-in toy runs. The module-scoped ``pipe``
fixture is in conftest.py."""

import os

import pytest
import torch

# Each of these runs takes 0.5-3.5 minutes on one thread, about 17 minutes together, which the
# CI's 25-minute budget cannot hold beside the other toy tests: opt-in. Validated with the fixed toy
# judge on 2026-11-23 (erasing "cross", guidance 6, 16 prompts; cross accuracy before -> after, IRA
# before -> after): ESD-u 1.00 -> 0.12 (IRA 0.92 -> 1.00), task vector 1.00 -> 0.62 (0.92 -> 0.92),
# AdvUnlearn 1.00 -> 0.31 (0.92 -> 0.90), STEREO 1.00 -> 0.19 (0.92 -> 0.94), Concept Ablation
# 1.00 -> 0.56 (0.92 -> 0.88) pass; gradient ascent (1.00 -> 0.69, IRA 0.92 -> 0.71) and CoGFD
# (1.00 -> 0.81) are xfails.
opt_in = pytest.mark.skipif(os.environ.get("EVALLEARN_TOY_FINETUNE") != "1",
                            reason="toy fine-tuning erasure runs are opt-in (EVALLEARN_TOY_FINETUNE=1)")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

