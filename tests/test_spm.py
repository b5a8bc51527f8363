import copy
import random

import pytest
import torch
from _finetune import one_thread, opt_in  # noqa: F401
from _toy_erasure import erase_on_toy, needs_toy
from contracts import TechniqueContract

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare
from evallearn.techniques import spm as S
from evallearn.techniques import training as T

TINY = {"iterations": 2, "max_denoising_steps": 4, "lr": 1e-3, "lr_warmup_steps": 0}


def _plan(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "kind": "object"},
                        "technique": {"name": "spm", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_defaults_are_the_authors():
    p = S.SPM.Params()
    assert (p.rank, p.alpha, p.iterations, p.lr, p.lr_scheduler, p.lr_warmup_steps, p.lr_num_cycles,
            p.max_grad_norm, p.max_denoising_steps, p.start_guidance, p.negative_guidance) == (
        1, 1.0, 3000, 1e-4, "cosine_with_restarts", 500, 3, 0.0, 30, 3.0, 1.0)
    assert (p.latent_anchoring, p.la_strength, p.sampling_batch_size, p.facilitated_transport, p.matching_metric) == (
        True, 1000.0, 4, True, "clipcos_tokenuni")


def test_adapters_sit_on_every_transformer_linear_and_conv(pipe):
    unet = copy.deepcopy(pipe.unet)
    names = [n for n, _ in S.target_modules(unet)]
    assert names and all(".attentions." in n for n in names)
    ends = {n.split(".attentions.")[1].split(".", 1)[1] for n in names}
    for want in ("proj_in", "proj_out", "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k",
                 "transformer_blocks.0.attn2.to_out.0", "transformer_blocks.0.ff.net.0.proj",
                 "transformer_blocks.0.ff.net.2"):
        assert want in ends, want
    every = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
             and ".attentions." in n]
    assert sorted(every) == sorted(names)
    S.install_adapters(unet, 1, 1.0, seed=0)
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():  # up = 0: the untrained membrane changes nothing
        assert torch.equal(unet(x, 10, encoder_hidden_states=c).sample,
                           pipe.unet(x, 10, encoder_hidden_states=c).sample)


def test_adapter_adds_the_scaled_rank_one_update_per_sample():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    cls = S._adapter_class()
    lin.add_module("spm", cls(lin, 1, 0.5, g))  # scale α / r = 0.5
    lin.register_forward_hook(S._hook)
    with torch.no_grad():
        lin.spm.up.weight.copy_(torch.randn(5, 1, generator=g))
    x = torch.randn(2, 3, 6, generator=g)
    delta = 0.5 * (lin.spm.up.weight @ lin.spm.down.weight)  # ΔW = (α/r) up·down, rank 1
    plain = x @ lin.weight.T + lin.bias
    with torch.no_grad():
        assert torch.allclose(lin(x), plain + x @ delta.T, atol=1e-6)
        lin.spm.multiplier = torch.tensor([0.0, 0.25])
        out = lin(x)
        assert torch.allclose(out[0], plain[0], atol=1e-6)
        assert torch.allclose(out[1], plain[1] + 0.25 * x[1] @ delta.T, atol=1e-6)
    assert torch.linalg.matrix_rank(delta) == 1
    # kaiming-uniform(a=√5) bound 1/√fan_in, as torch's Linear init
    assert lin.spm.down.weight.abs().max() <= 1 / 6 ** 0.5
    conv = torch.nn.Conv2d(4, 3, 1)
    conv.add_module("spm", cls(conv, 1, 1.0, g))
    conv.register_forward_hook(S._hook)
    with torch.no_grad():
        conv.spm.up.weight.fill_(0.5)
        xc = torch.randn(1, 4, 2, 2, generator=g)
        d = 0.5 * torch.einsum("oi,bihw->bohw", torch.ones(3, 1) @ conv.spm.down.weight[:, :, 0, 0], xc)
        assert torch.allclose(conv(xc), torch.nn.functional.conv2d(xc, conv.weight, conv.bias) + d, atol=1e-6)


def test_query_timestep_is_the_authors_index_into_999_to_0():
    assert S.query_timestep(1, 30) == 999 - 33
    assert S.query_timestep(29, 30) == 999 - 966
    assert S.query_timestep(3, 30) == 899


def test_anchors_are_scaled_to_the_target_norm_and_the_released_batch_interleaves():
    target = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(1))
    anchors = S.sample_anchors(target, 50, torch.Generator().manual_seed(2), random.Random(3))
    ratios = torch.tensor([float(a.norm() / target.norm()) for a in anchors])
    assert ratios.min() >= 0.8 - 1e-6 and ratios.max() <= 1.2 + 1e-6 and ratios.std() > 0.05
    assert all(a.shape == target.shape for a in anchors)
    null = torch.zeros(1, 77, 8)
    a = [torch.full((1, 77, 8), float(i)) for i in (1, 2, 3, 4)]
    released = S.anchor_batch(a, null, "released")  # [∅, a1, ∅, a2 | ∅, a3, ∅, a4] → second half
    assert released[:, 0, 0].tolist() == [0.0, 3.0, 0.0, 4.0]
    assert S.anchor_batch(a[:3], null, "released")[:, 0, 0].tolist() == [2.0, 0.0, 3.0]
    assert S.anchor_batch(a, null, "all")[:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_anchor_acceptance_favours_directions_far_from_the_target():
    """A 2-d 'embedding': a direction at angle θ is accepted with probability min(1, 1 − cos θ)."""
    target = torch.tensor([[1.0, 0.0]])
    anchors = S.sample_anchors(target, 400, torch.Generator().manual_seed(0), random.Random(0))
    cos = torch.tensor([float(a.flatten() @ target.flatten() / a.norm()) for a in anchors])
    # accepted density ∝ min(1, 1 − cos θ) on uniform θ: E[cos] = −(π/2) / (2π − 2) ≈ −0.367
    # (0 without rejection); standard error of 400 draws ≈ 0.03
    assert abs(float(cos.mean()) + (torch.pi / 2) / (2 * torch.pi - 2)) < 0.09


def test_transport_weights_by_hand():
    emb = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # 3 prompts, 1 token, d = 2
    erased = torch.tensor([[[1.0, 0.0]]])
    ids = torch.tensor([[49406, 10, 11, 49407], [49406, 12, 49407, 49407], [49406, 10, 49407, 49407]])
    erased_ids = torch.tensor([[49406, 10, 11, 49407]])
    special = {49406, 49407}
    cos = S.transport_weights(emb, ids, erased, erased_ids, special, "clipcos")
    assert torch.allclose(cos, torch.tensor([1.0, 0.0, 2 ** -0.5]))
    tok = S.transport_weights(emb, ids, erased, erased_ids, special, "tokenuni")
    assert torch.allclose(tok, torch.tensor([1.0, 0.0, 0.5]))
    both = S.transport_weights(emb, ids, erased, erased_ids, special, "clipcos_tokenuni")
    assert torch.allclose(both, torch.tensor([1.0, 0.0, 2 ** -0.5]))
    # several erased prompts: the best match counts
    two = S.transport_weights(emb, ids, torch.cat([erased, torch.tensor([[[0.0, 1.0]]])]),
                              torch.cat([erased_ids, torch.tensor([[49406, 12, 49407, 49407]])]), special, "tokenuni")
    assert torch.allclose(two, torch.tensor([1.0, 1.0, 0.5]))


def test_erase_loss_is_the_negatively_guided_target(pipe):
    unet = copy.deepcopy(pipe.unet)
    S.install_adapters(unet, 1, 1.0, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in S.adapters(unet):
            a.up.weight.copy_(0.1 * torch.randn(a.up.weight.shape, generator=g))
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond, null = T.encode(pipe, ["cat"]), T.encode(pipe, [""])
    p = S.SPM.Params(latent_anchoring=False, negative_guidance=1.5)
    loss, _ = S.spm_loss(unet, x, 500, cond, null, p, g, random.Random(0), T.Precisioned("cpu"))
    with torch.no_grad():
        def run(m, c):
            return m(x, 500, encoder_hidden_states=c).sample

        pos, neu = run(pipe.unet, cond), run(pipe.unet, null)
        want = ((run(unet, cond) - (neu - 1.5 * (pos - neu))) ** 2).mean()
    assert torch.allclose(loss, want, rtol=1e-5)
    # anchoring adds la_strength × the adapted-vs-original error on the anchors
    p = S.SPM.Params(la_strength=10.0, sampling_batch_size=2, anchor_terms="all", negative_guidance=1.5)
    gen, rng = torch.Generator().manual_seed(5), random.Random(5)
    loss2, parts = S.spm_loss(unet, x, 500, cond, null, p, gen, rng, T.Precisioned("cpu"))
    anchors = S.sample_anchors(cond, 2, torch.Generator().manual_seed(5), random.Random(5))
    with torch.no_grad():
        emb = torch.cat(anchors)
        xs = x.expand(2, -1, -1, -1)
        want_a = ((unet(xs, 500, encoder_hidden_states=emb).sample
                   - pipe.unet(xs, 500, encoder_hidden_states=emb).sample) ** 2).mean()
    assert abs(parts["anchor"] - float(want_a)) <= 1e-5 * float(want_a) + 1e-12
    assert torch.allclose(loss2, want + 10.0 * want_a, rtol=1e-5)


def test_training_erases_in_the_membrane_only_and_anchoring_holds_the_rest(pipe, tiny_pipe_dir, tmp_path):
    """Only adapter tensors change; with weight 0 the model is the original bit for bit; the
    erase loss falls; with latent anchoring the predictions on fresh anchors move less."""
    base = {**TINY, "iterations": 20, "lr": 1e-3, "lr_scheduler": "constant", "facilitated_transport": False}
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond, null = T.encode(pipe, ["cat"]), T.encode(pipe, [""])
    probe = S.SPM.Params(latent_anchoring=True, anchor_terms="all", la_strength=1.0, sampling_batch_size=8)

    def losses(unet):  # (erase, anchor) at the training distribution's latents and timesteps, no training
        from evallearn.models.sampling import ddim_sample_until

        gen, rng = torch.Generator().manual_seed(7), random.Random(7)
        sched = S.train_scheduler(pipe, 4)
        out = []
        with torch.no_grad():
            for k in (1, 2, 3):
                xk = ddim_sample_until(unet, sched, cond, null, 3.0, x, k)
                out.append(S.spm_loss(unet, xk, S.query_timestep(k, 4), cond, null, probe, gen, rng,
                                      T.Precisioned("cpu"))[1])
        return sum(o["erase"] for o in out) / 3, sum(o["anchor"] for o in out) / 3

    fresh = copy.deepcopy(pipe.unet)
    S.install_adapters(fresh, 1, 1.0, 0)
    runs = {}
    for la in (False, True):
        plan = _plan(tiny_pipe_dir, tmp_path / str(la), {**base, "latent_anchoring": la})
        edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
        runs[la] = losses(edited.unet)
    b, new = pipe.unet.state_dict(), edited.unet.state_dict()
    added = set(new) - set(b)
    assert added and all(".spm." in k for k in added)
    assert all(torch.equal(b[k], new[k]) for k in b)
    with torch.no_grad():
        S.set_multiplier(edited.unet, 0.0)
        assert torch.equal(edited.unet(x, 300, encoder_hidden_states=cond).sample,
                           pipe.unet(x, 300, encoder_hidden_states=cond).sample)
        S.set_multiplier(edited.unet, None)
    erase0, anchor0 = losses(fresh)
    assert anchor0 == 0
    assert runs[False][0] < 0.7 * erase0
    assert runs[True][1] < 0.5 * runs[False][1]


def test_transport_pipeline_weights_each_prompt(pipe, tiny_pipe_dir, tmp_path):
    """The concept itself passes through the full membrane (γ = 1); with transport, an image of
    the concept equals the weight-1 pipeline's and another prompt's differs from it."""
    plan = _plan(tiny_pipe_dir, tmp_path, {**TINY, "iterations": 3})
    ft = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    with torch.no_grad():
        for a in S.adapters(ft.unet):  # a strong membrane, to see it
            a.up.weight.fill_(0.5)
    assert isinstance(ft, S.Guidance)
    state = ft.setup_guidance(["cat", "a dog"], ["", ""], T.encode(pipe, ["cat", "a dog"]),
                              T.encode(pipe, ["", ""]), 3.0)
    assert state["weight"][0] == pytest.approx(1.0, abs=1e-5)
    assert state["weight"][1] < 1.0
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline(**ft.components)
    plain.set_progress_bar_config(disable=True)

    def img(pl, prompt):
        return pl(prompt, num_inference_steps=2, height=16, width=16, guidance_scale=3.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images

    assert torch.allclose(img(ft, "cat"), img(plain, "cat"), atol=1e-5)
    assert not torch.allclose(img(ft, "a dog"), img(plain, "a dog"), atol=1e-4)


@pytest.mark.parametrize("params, key", [
    ({"rank": 0}, "rank"),
    ({"anchor_terms": "some"}, "anchor_terms"),
    ({"matching_metric": "cos"}, "matching_metric"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert key in str(e.value) and "\n" not in str(e.value)


#: the toy budget (docs/techniques/spm.md)
TOY_PARAMS = {"iterations": 300, "lr": 1e-3, "lr_warmup_steps": 50, "max_denoising_steps": 20}


@needs_toy
@opt_in
@pytest.mark.slow
@pytest.mark.parametrize("concept", [
    pytest.param("cross", marks=pytest.mark.xfail(strict=False, reason=(
        "does not erase the toy world's cross (2026-11-30, guidance 6, 16 prompts, TOY_PARAMS): cross 1.00 -> 1.00, "
        "IRA 0.92 -> 0.92; red is erased (1.00 -> 0.00, IRA 0.84 -> 0.84); docs/techniques/spm.md"))),
    "red",
])
def test_spm_erases_on_the_toy_world(tmp_path_factory, concept):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / f"toy_spm_{concept}", "spm", TOY_PARAMS, concept=concept)
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "spm"
    params = {**TINY, "iterations": 1}
