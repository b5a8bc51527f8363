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
from evallearn.techniques import training as T
from evallearn.techniques.ant import ANT, ant_terms, combine, draw_steps, top_fraction

TINY = {"iterations": 2, "ddim_steps": 4, "before_step": 2, "lr": 1e-3, "saliency_seeds": [1],
        "saliency_iterations": 1}


def _plan(tiny_pipe_dir, tmp_path, params):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "kind": "object"},
                        "technique": {"name": "ant", "params": params}, "output_dir": str(tmp_path),
                        "sampler": {"height": 16, "width": 16}})
    return prepare(cfg)


def test_defaults_are_the_authors():
    p = ANT.Params()
    assert (p.train_method, p.iterations, p.lr, p.negative_guidance, p.start_guidance, p.ddim_steps,
            p.before_step, p.alpha_1, p.alpha_2) == ("full", 250, 5e-4, 1.0, 3.0, 50, 7, 1.0, 0.5)
    assert (p.saliency, p.saliency_seeds, p.saliency_iterations, p.saliency_lr, p.saliency_threshold) == (
        True, (24, 42, 98, 403, 3407), 10, 1e-2, 0.5)


def test_early_and_late_steps_split_at_before_step():
    p = ANT.Params(ddim_steps=10, before_step=3)
    rng = random.Random(0)
    draws = [draw_steps(rng, p) for _ in range(400)]
    assert {a for a, _ in draws} == {0, 1, 2}
    assert {b for _, b in draws} == set(range(3, 10))


def test_loss_terms_equal_the_hand_computed_targets(pipe):
    """Early: the student's conditional prediction regresses onto the teacher's guided prediction
    e0 + η(ec − e0); late: onto the reversed e0 − η(ec − e0); both keep the unconditional one."""
    g = torch.Generator().manual_seed(0)
    student = copy.deepcopy(pipe.unet)
    with torch.no_grad():  # make the student differ from the teacher
        for q in student.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=g))
    teacher = pipe.unet
    xp, xm = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cond, null = T.encode(pipe, ["cat"]), T.encode(pipe, [""])
    eta = 0.7
    with torch.no_grad():
        terms = ant_terms(student, teacher, xp, 900, xm, 300, cond, null, eta)

        def run(m, x, t, c):
            return m(x, torch.tensor([t]), encoder_hidden_states=c).sample

        e0p, ecp, e0m, ecm = run(teacher, xp, 900, null), run(teacher, xp, 900, cond), run(teacher, xm, 300, null), \
            run(teacher, xm, 300, cond)
        s0p, scp, s0m, scm = run(student, xp, 900, null), run(student, xp, 900, cond), run(student, xm, 300, null), \
            run(student, xm, 300, cond)
    want = [((scp - (e0p + eta * (ecp - e0p))) ** 2).mean(), ((s0p - e0p) ** 2).mean(),
            ((scm - (e0m - eta * (ecm - e0m))) ** 2).mean(), ((s0m - e0m) ** 2).mean()]
    for got, w in zip(terms, want, strict=True):
        assert torch.allclose(got, w, rtol=1e-4, atol=1e-7)
    assert float(combine(1.0, 2.0, 3.0, 4.0, alpha_1=1.0, alpha_2=0.5)) == 3.0 + 0.5 * 4.0 + 1.0 * (1.0 + 0.5 * 2.0)
    assert float(combine(1.0, 2.0, 3.0, 4.0, alpha_1=2.0, alpha_2=0.25)) == 3.0 + 1.0 + 2.0 * 1.5


def test_top_fraction_keeps_the_largest_entries():
    score = torch.tensor([[0.1, 5.0, 0.3], [2.0, 0.0, 4.0]])
    assert top_fraction(score, 0.5).tolist() == [[False, True, False], [True, False, True]]  # int(6 * 0.5) = 3 largest
    assert top_fraction(score, 0.2).tolist() == [[False, True, False], [False, False, False]]
    assert top_fraction(score, 1.0).all()


def _changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k: (sa[k] != sb[k]) for k in sa if not torch.equal(sa[k], sb[k])}


def test_saliency_leaves_the_unselected_weights_untouched(pipe, tiny_pipe_dir, tmp_path):
    """With threshold 0.25 and two runs intersected, at most a quarter of every trained tensor
    moves; without the mask far more does."""
    params = {**TINY, "saliency_threshold": 0.25, "saliency_seeds": [1, 2], "train_method": "xattn"}
    plan = _plan(tiny_pipe_dir, tmp_path / "a", params)
    edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
    changed = _changed(pipe.unet, edited.unet)
    assert changed and all("attn2" in k for k in changed)
    for k, diff in changed.items():
        if diff.numel() >= 8:
            assert diff.float().mean() <= 0.25 + 1e-6, k
    plan = _plan(tiny_pipe_dir, tmp_path / "b", {**params, "saliency": False})
    free = _changed(pipe.unet, plan.technique.apply(copy.deepcopy(pipe), plan.ctx).unet)
    big = [k for k, d in free.items() if d.numel() >= 8]
    assert sum(free[k].float().mean() for k in big) / len(big) > 0.9


def _mean_terms(pipe, unet, teacher, p, n=10):
    """Mean (L+, U+, L-, U-) over ``n`` fixed draws, trajectories sampled by ``unet``."""
    from evallearn.techniques import ant

    sched = T.ddim_scheduler(pipe, p.ddim_steps)
    cond, null = T.encode(pipe, ["cat"]), T.encode(pipe, [""])
    gen, rng = torch.Generator().manual_seed(9), random.Random(9)
    out = torch.zeros(4)
    with torch.no_grad():
        for _ in range(n):
            k1, k2 = ant.draw_steps(rng, p)
            start = T.randn((1, 4, 8, 8), gen, "cpu")
            xp = T.ddim_sample_until(unet, sched, cond, null, p.start_guidance, start, k1)
            xm = T.ddim_sample_until(unet, sched, cond, null, p.start_guidance, start, k2)
            out += torch.stack(ant_terms(unet, teacher, xp, sched.timesteps[k1], xm, sched.timesteps[k2], cond, null,
                                         p.negative_guidance))
    return out / n


def test_training_reverses_the_late_guidance_and_the_alphas_keep_the_rest(pipe, tiny_pipe_dir, tmp_path):
    """Without the preservation terms (alphas 0) training halves the late reversal loss L-, as
    ESD's does; with the authors' alphas the unconditional and early predictions drift less."""
    base = {**TINY, "iterations": 30, "saliency": False, "train_method": "xattn", "lr": 1e-4}
    teacher = T.frozen_copy(pipe.unet)
    runs = {}
    for name, alphas in {"none": (0.0, 0.0), "authors": (1.0, 0.5)}.items():
        plan = _plan(tiny_pipe_dir, tmp_path / name, {**base, "alpha_1": alphas[0], "alpha_2": alphas[1]})
        edited = plan.technique.apply(copy.deepcopy(pipe), plan.ctx)
        runs[name] = _mean_terms(pipe, edited.unet, teacher, plan.technique.params)
    before = _mean_terms(pipe, pipe.unet, teacher, ANT.Params(**{**base, "saliency": False}))
    assert before[0] == 0 and before[1] == 0 and before[3] == 0  # the student starts as the teacher
    assert runs["none"][2] < 0.5 * before[2]
    drift = lambda t: t[0] + t[1] + t[3]  # noqa: E731
    assert drift(runs["authors"]) < 0.5 * drift(runs["none"])


@pytest.mark.parametrize("params, key", [
    ({"before_step": 50}, "before_step"),
    ({"train_method": "attn"}, "train_method"),
    ({"saliency_threshold": 0}, "saliency_threshold"),
])
def test_bad_parameters_are_one_line_errors(tiny_pipe_dir, tmp_path, params, key):
    with pytest.raises(UserError) as e:
        _plan(tiny_pipe_dir, tmp_path, params)
    assert key in str(e.value) and "\n" not in str(e.value)


def _toy_prompts(concept: str) -> list[str]:
    """The concept with each colour and style, and the bare word (the multi-prompt option, as
    tests/test_esd.py uses it)."""
    from evallearn_toy import COLOURS, STYLES
    from evallearn_toy.concepts import TEMPLATES, describe, fill_template

    return [fill_template(TEMPLATES[0], describe(concept, c, s)) for s in STYLES for c in COLOURS] + [
        concept, f"a {concept}"]


#: the toy budget (docs/techniques/ant.md): the authors' defaults with 20 DDIM steps (the toy model
#: samples with 20) and ``before_step`` scaled with them (7/50 -> 3/20)
TOY_PARAMS = {"ddim_steps": 20, "before_step": 3}


@needs_toy
@opt_in
@pytest.mark.slow
def test_ant_erases_red_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_ant_red", "ant", TOY_PARAMS, concept="red")
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


@needs_toy
@opt_in
@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "does not erase the toy world's cross (2026-11-30, guidance 6, 16 prompts, authors' defaults with 20-step "
    "trajectories and before_step 3): trained on the 17 variants cross 1.00 -> 1.00 (IRA 0.92 -> 0.96); on the bare "
    "word 1.00 -> 0.875 (IRA 0.92 -> 0.90), while red is erased (1.00 -> 0.00). ANT keeps the first steps' score "
    "field by design; see docs/techniques/ant.md"))
def test_ant_erases_cross_on_the_toy_world(tmp_path_factory):
    v = erase_on_toy(tmp_path_factory.getbasetemp() / "toy_ant_cross", "ant",
                     {**TOY_PARAMS, "prompts": _toy_prompts("cross")}, concept="cross")
    assert v["acc_after"] <= 0.25, v
    assert v["ira_after"] >= 0.85 * v["ira_before"], v


class TestContract(TechniqueContract):
    name = "ant"
    params = {**TINY, "iterations": 1}
