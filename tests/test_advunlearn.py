import copy

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques import _training as T
from evallearn.techniques.advunlearn import AdvUnlearn, adversarial_embeds, text_encoder_filter

TINY = {"iterations": 6, "warmup_iter": 2, "attack_step": 3, "ddim_steps": 3, "retain_batch": 2, "lr": 1e-3,
        "attack_lr": 1e-2}


def plan_for(tiny_pipe_dir, tmp_path, params, retain=("dog", "car")):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": list(retain)},
                        "technique": {"name": "advunlearn", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_prefix_adversarial_prompt_layout(pipe):
    vocab = T.word_embeddings(pipe.text_encoder).weight.detach()
    adv = torch.randn(1, 2, vocab.shape[1])
    ids, emb = adversarial_embeds(pipe, vocab, "a cat", adv)
    plain = T.token_ids(pipe, ["a cat"])
    assert ids.shape == plain.shape and emb.shape == (1, 77, vocab.shape[1])
    assert torch.equal(emb[0, 1:3], adv[0])  # after the start token
    assert torch.equal(emb[0, 3:5], vocab[plain[0, 1:3]])  # then the prompt's words
    assert torch.equal(ids[0, 3:5], plain[0, 1:3]) and ids[0, 0] == plain[0, 0]
    # with the plain word embeddings the encoder reproduces its normal output
    assert torch.allclose(T.encode_embeds(pipe.text_encoder, plain, vocab[plain]), T.encode(pipe, ["a cat"]))


def test_text_encoder_variant_trains_layers_not_embeddings(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, TINY)
    assert plan.technique.edits == ("text_encoder",)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    changed = {n for (n, a), b in zip(pipe.text_encoder.named_parameters(), edited.text_encoder.parameters(),
                                      strict=True) if not torch.equal(a, b)}
    assert changed and all(text_encoder_filter("all")(n) for n in changed)
    assert not any("embeddings" in n for n in changed)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), edited.unet.parameters(), strict=True))
    # the concept's conditioning moved more than the retained concepts'
    before = T.encode(pipe, ["cat", "dog", "car"])
    after = T.encode(edited, ["cat", "dog", "car"])
    d = (after - before).flatten(1).norm(dim=1)
    assert d[0] > d[1:].max(), d


def test_unet_variant_caches_the_unet(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, {**TINY, "train_method": "xattn", "iterations": 3})
    assert plan.technique.edits == ("unet",)
    first, cached = plan.technique.load_or_apply(copy.deepcopy(pipe), plan.ctx)
    assert not cached and (plan.ctx.cache_dir / "unet.safetensors").exists()
    again, cached = AdvUnlearn(plan.technique.params).load_or_apply(copy.deepcopy(pipe), plan.ctx)
    assert cached and all(torch.equal(a, b) for a, b in zip(first.unet.parameters(), again.unet.parameters(),
                                                             strict=True))


def test_retain_prompts_are_required_with_a_retain_weight(pipe, tiny_pipe_dir, tmp_path):
    plan = plan_for(tiny_pipe_dir, tmp_path, TINY, retain=())
    with pytest.raises(UserError, match="retain"):
        plan.technique.apply(copy.deepcopy(pipe), plan.ctx)


def test_defaults_are_paper_scale():
    p = AdvUnlearn.Params()
    assert (p.train_method, p.iterations, p.warmup_iter, p.attack_step, p.attack_lr, p.lr, p.retain_loss_w,
            p.adv_prompt_num, p.retain_batch) == ("text_encoder_full", 1000, 200, 30, 1e-3, 1e-5, 0.3, 1, 5)


@needs_toy
@opt_in
@pytest.mark.slow
def test_advunlearn_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_runs", "advunlearn",
                     {"iterations": 100, "warmup_iter": 30, "attack_step": 5, "ddim_steps": 20, "lr": 1e-4})
    assert v["acc_after"] <= v["acc_before"] - 0.3, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "advunlearn"
    params = {**TINY, "iterations": 2, "warmup_iter": 1, "attack_step": 1, "ddim_steps": 2}
