import numpy as np
import pytest

from evallearn.config import parse_config
from evallearn.generation import GenRequest
from evallearn.judges.base import Judge
from evallearn.metrics.clip_score import ClipScore
from evallearn.runner import prepare


class FixedJudge(Judge):
    name = "fixed"

    def __init__(self, values):
        self.values = np.asarray(values)

    def spec(self):
        return {"judge": "fixed"}

    def score(self, images, texts):
        return self.values[: len(texts)]


@pytest.fixture
def ctx(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "metrics": [{"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir)}}],
                        "output_dir": str(tmp_path)})
    return prepare(cfg).ctx


def test_clip_score_is_100_times_clipped_cosine(ctx):
    m = ClipScore(ClipScore.Params(prompt_set="all", images_per_prompt=1), ctx)
    reqs = m.requests()
    assert [r.prompt for r in reqs] == ["a photo of a cat", "a photo of a dog"]
    m.update(reqs, np.zeros((2, 8, 8, 3), np.uint8), {"clip": FixedJudge([0.3, -0.2])})
    res = m.compute()
    assert res.value == pytest.approx((30.0 + 0.0) / 2)
    assert res.details["per_group"] == {"target": pytest.approx(30.0), "retain": pytest.approx(0.0)}
    assert res.n == 2 and res.ci_low <= res.value <= res.ci_high


def test_state_merges_across_shards(ctx):
    whole = ClipScore(ClipScore.Params(images_per_prompt=4), ctx)
    reqs = whole.requests()
    vals = [0.1, 0.25, 0.4, 0.05]
    whole.update(reqs, np.zeros((4, 8, 8, 3), np.uint8), {"clip": FixedJudge(vals)})
    a, b = ClipScore(whole.params, ctx), ClipScore(whole.params, ctx)
    a.update(reqs[:1], np.zeros((1, 8, 8, 3), np.uint8), {"clip": FixedJudge(vals[:1])})
    b.update(reqs[1:], np.zeros((3, 8, 8, 3), np.uint8), {"clip": FixedJudge(vals[1:])})
    a.merge(b)
    assert a.compute().value == pytest.approx(whole.compute().value) == pytest.approx(20.0)


def test_clip_judge_matches_hand_computed_cosine(tiny_clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from evallearn.judges.clip import ClipJudge

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
    texts = ["a cat", "a red circle", "a dog"]
    judge = ClipJudge(ClipJudge.Params(clip_model=str(tiny_clip_dir)))
    got = judge.score(images, texts)
    model = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    proc = CLIPProcessor.from_pretrained(str(tiny_clip_dir))
    with torch.no_grad():
        inp = proc(text=texts, images=list(images), return_tensors="pt", padding=True)
        out = model(**inp)
    img, txt = out.image_embeds, out.text_embeds
    want = (torch.nn.functional.normalize(img, dim=-1) * torch.nn.functional.normalize(txt, dim=-1)).sum(-1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_missing_clip_weights_name_the_folder(ctx, tmp_path):
    from evallearn.errors import UserError
    from evallearn.judges.clip import ClipJudge

    with pytest.raises(UserError, match="has no config.json"):
        ClipJudge(ClipJudge.Params(clip_model=str(tmp_path / "nothing"))).score(np.zeros((1, 8, 8, 3), np.uint8), ["x"])


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    from evallearn.stats import bootstrap_ci

    vals = np.r_[np.zeros(30), np.ones(10)]
    lo, hi = bootstrap_ci(vals)
    assert (lo, hi) == bootstrap_ci(vals)
    assert lo < 0.25 < hi and 0.1 < lo and hi < 0.4
    assert bootstrap_ci([0.7]) == (0.7, 0.7)


def test_request_uses_run_sampler(ctx):
    r = ctx.request("x", 3)
    # guidance left unset: a Stable Diffusion folder's own, 7.5
    assert r == GenRequest("x", 3, steps=20, guidance_scale=7.5, height=64, width=64, scheduler="ddim")
