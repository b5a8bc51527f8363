"""The attacks run against a pipeline and improve their objective; results are cached by spec hash."""

import pytest

from evallearn.attacks import get_attack


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(tiny_pipe_dir))
    p.set_progress_bar_config(disable=True)
    return p


POOL = ("red", "green", "blue", "cat", "dog", "photo", "ball", "box", "image", "bright", "dark", "small")


def test_ring_a_bell_search_beats_its_first_generation(pipe, tmp_path):
    import numpy as np
    import torch

    cls = get_attack("ring_a_bell")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sensitive prompt,normal prompt\na photo of a cat,a photo\na red cat,a red thing\n")
    a = cls(cls.Params(population=16, generations=15, length=4, pairs=str(pairs), token_pool=POOL))
    from evallearn.attacks.base import encode, token_ids, vocabulary_ids

    target = encode(pipe.text_encoder, token_ids(pipe, ["a cat"]))[0][0].float() + 3 * a.concept_vector(pipe)
    pool = vocabulary_ids(pipe.tokenizer, POOL)
    first = cls(cls.Params(population=16, generations=1, length=4, token_pool=POOL))
    _, l1 = first.search(pipe, target, pool, np.random.default_rng(0))
    best, l15 = a.search(pipe, target, pool, np.random.default_rng(0))
    assert l15 < l1 and set(best.tolist()) <= set(pool.tolist())
    assert torch.isfinite(torch.tensor(l15))


def test_mma_gcg_lowers_the_loss_and_avoids_banned_words(pipe):
    cls = get_attack("mma_diffusion")
    a = cls(cls.Params(steps=4, length=5, topk=8, candidates=16, banned_words=("cat",)))
    [(adv, loss)] = a.attack(pipe, ["a photo of a cat"])
    import torch

    from evallearn.attacks.base import encode, token_ids

    tok = pipe.tokenizer
    start = torch.full((1, 5), tok("!", add_special_tokens=False).input_ids[0])
    target = encode(pipe.text_encoder, token_ids(pipe, ["a photo of a cat"]))[1][0].float()
    l0 = float(a.losses(pipe, start, target)[0])
    assert loss < l0 and "cat" not in adv


def test_p4d_runs_against_a_different_model_and_returns_target_on_itself(pipe):
    from evallearn.models.tiny import build_tiny_pipeline

    cls = get_attack("p4d")
    a = cls(cls.Params(iterations=3, eval_step=2, token_pool=POOL, clip_model="tiny-random"))
    assert a.attack(pipe, ["a red cat"]) == [("a red cat", 0.0)]
    from types import SimpleNamespace

    base = build_tiny_pipeline(seed=1)
    ctx = SimpleNamespace(config=SimpleNamespace(sampler=SimpleNamespace(steps=2, guidance_scale=1.0)),
                          height=32, width=32, seed=0)
    [(adv, loss)] = a.attack(pipe, ["a red cat photo"], ctx, base, seeds=[5])
    assert adv and 0 <= loss <= 2  # 1 - cosine similarity of the kept prompt's image


def test_p4d_k_interleaves_a_learnable_token_before_every_k_target_tokens(pipe):
    cls = get_attack("p4d")
    tok = pipe.tokenizer
    words = tok("a red cat photo", add_special_tokens=False).input_ids
    ids, learn = cls(cls.Params(variant="k", k=3)).layout(tok, "a red cat photo")
    # the authors' layout: learnable where i % (k + 1) == 0, len(words) // k + 1 of them
    assert learn.tolist() == [True, False, False, False, True, False]
    assert ids[~learn].tolist() == words
    ids, learn = cls(cls.Params(variant="n", n_tokens=5)).layout(tok, "a red cat photo")
    assert learn.all() and len(ids) == 5


def test_attack_results_are_cached_by_spec(pipe, tmp_path, monkeypatch):
    cls = get_attack("mma_diffusion")
    a = cls(cls.Params(steps=1, length=3, topk=4, candidates=4))
    first = a.run_cached(pipe, ["a dog"], tmp_path, "m1")
    monkeypatch.setattr(a, "attack", lambda *args, **kw: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert a.run_cached(pipe, ["a dog"], tmp_path, "m1") == first
    assert len(list(tmp_path.glob("mma_diffusion-*/prompts.csv"))) == 1
    with pytest.raises(AssertionError):
        a.run_cached(pipe, ["a dog"], tmp_path, "another model")


@pytest.mark.parametrize("technique, refused", [("sld", True), ("safree", True), ("uce", False)])
def test_p4d_is_refused_where_it_cannot_see_the_technique(tiny_pipe_dir, tmp_path, technique, refused):
    # P4D's objective reads the UNet; an inference-time technique leaves the UNet as the base's.
    from evallearn.config import parse_config
    from evallearn.errors import UserError
    from evallearn.runner import prepare

    src = tmp_path / "p.csv"
    src.write_text("prompt\na cat\n")
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "technique": {"name": technique}, "output_dir": str(tmp_path),
                        "metrics": [{"name": "asr", "params": {"prompts": "csv", "prompts_params": {"source": str(src)},
                                                               "attack": "p4d", "judge": "clip"}}]})
    if refused:
        with pytest.raises(UserError, match=f"cannot see inference-time technique '{technique}'") as e:
            prepare(cfg)
        assert "\n" not in str(e.value)
    else:
        prepare(cfg)
