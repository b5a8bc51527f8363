import copy

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques.cogfd import CoGFD


def plan_for(tiny_pipe_dir, tmp_path, params, retain=("dog", "car")):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": list(retain)},
                        "technique": {"name": "cogfd", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_combination_moves_and_sub_concepts_stay(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {"combination_prompts": ["a cat drinking wine"],
                                              "sub_concepts": ["a cat", "wine"], "image_seeds": [1, 2],
                                              "image_steps": 2, "steps": 60, "lr": 1e-3, "t_start": 0})
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    changed = [n for (n, a), b in zip(pipe.unet.named_parameters(), edited.unet.parameters(), strict=True)
               if not torch.equal(a, b)]
    assert changed and all("attn2" in n and "to_v" not in n for n in changed)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([995, 995, 995])
    # as in training: text encoder and cross-attention masked to the prompt tokens
    tok = pipe.tokenizer(["a cat drinking wine", "a cat", "wine"], padding="max_length", max_length=77,
                         return_tensors="pt")
    m = tok.attention_mask.bool()
    with torch.no_grad():
        cond = pipe.text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
        d = (edited.unet(x, t, cond, encoder_attention_mask=m).sample
             - pipe.unet(x, t, cond, encoder_attention_mask=m).sample).flatten(1).norm(dim=1)
    assert d[0] > 2 * d[1:].max(), d


def test_needs_sub_concepts(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {"steps": 1}, retain=())
    with pytest.raises(UserError, match="sub-concepts"):
        plan.technique.apply(copy.deepcopy(pipe), plan.ctx)


def test_defaults_follow_run_sh():
    p = CoGFD.Params()
    assert (p.lr, p.steps, p.only_xa, p.t_start, p.t_end, p.max_batch_size, p.erase_weight) == (
        2.5e-5, 130, True, 990, 1000, 20, 0.1)


@needs_toy
@opt_in
@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "partial on the toy world (fixed judge, 2026-11-23), erasing 'cross' at guidance 6, 16 prompts: the default "
    "130 steps at t in [990, 1000) with lr 1e-4 gave cross accuracy 1.00 -> 0.81 (IRA 0.92 -> 0.88); with the "
    "old judge lr 2e-4 did no better. Short of the -0.3 this test asks"))
def test_cogfd_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "cogfd", {"image_steps": 20, "lr": 1e-4})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v
