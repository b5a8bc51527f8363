import copy

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

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
    # as in training: text encoder masked to the prompt tokens, the mask added to the cross-attention logits
    from evallearn.techniques._attention import CrossAttnProcessor, set_cross_processors

    tok = pipe.tokenizer(["a cat drinking wine", "a cat", "wine"], padding="max_length", max_length=77,
                         return_tensors="pt")
    proc = CrossAttnProcessor()
    proc.token_bias = tok.attention_mask.float()
    before = {m: set_cross_processors(m.unet, lambda _n: proc) for m in (pipe, edited)}
    with torch.no_grad():
        cond = pipe.text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
        d = (edited.unet(x, t, cond).sample - pipe.unet(x, t, cond).sample).flatten(1).norm(dim=1)
    for m, procs in before.items():
        m.unet.set_attn_processor(procs)
    assert d[0] > 2 * d[1:].max(), d


def test_cross_attention_mask_is_added_to_the_logits_as_the_script_does():
    # The authors' processor hands the 0/1 token mask to get_attention_scores, which adds it to
    # q k^T * scale: real tokens get +1, padding +0, nothing is cut out. Derived by hand here.
    from diffusers.models.attention_processor import Attention

    from evallearn.techniques._attention import CrossAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    x, c = torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    proc = CrossAttnProcessor()
    proc.token_bias = mask
    attn.set_processor(proc)
    with torch.no_grad():
        got = attn(x, encoder_hidden_states=c)
        q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
        split = lambda t: t.view(2, t.shape[1], 2, 4).transpose(1, 2)  # noqa: E731
        logits = split(q) @ split(k).transpose(-1, -2) * 4 ** -0.5 + mask[:, None, None, :]
        out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, 5, 8)
        expect = attn.to_out[0](out)
        hard = (split(q) @ split(k).transpose(-1, -2) * 4 ** -0.5 + (1 - mask[:, None, None, :]) * -1e4)
        hard = attn.to_out[0]((hard.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert (got - hard).abs().max() > 1e-2  # a hard mask is a different computation


def test_training_restores_the_attention_processors(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {"image_seeds": [1], "image_steps": 1, "steps": 1, "t_start": 0})
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    assert ({type(p).__name__ for p in edited.unet.attn_processors.values()}
            == {type(p).__name__ for p in pipe.unet.attn_processors.values()})


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


class TestContract(TechniqueContract):
    name = "cogfd"
    params = {"combination_prompts": ["a cat drinking wine"], "sub_concepts": ["a cat", "wine"], "image_seeds": [1],
              "image_steps": 2, "steps": 1, "t_start": 0}
