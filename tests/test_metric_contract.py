"""The metric contract: declared state, per-sample records with metadata, grouping as an
aggregation, judges handed to ``update``, and ``merge`` only where it is exact.

The fake judges below answer from the image itself (its grey level), never from how many images
they were shown before, so a metric scored in two shards sees exactly the answers it sees whole.
"""

import json

import numpy as np
import pytest

from evallearn.config import parse_config
from evallearn.judges.base import Judge
from evallearn.metrics.base import MergeError, Metric, Sample, aggregate
from evallearn.runner import prepare
from evallearn.stats import bootstrap_ci


def grey(n, start=0):
    """``n`` images; image i is filled with grey level ``start + i``."""
    return np.stack([np.full((8, 8, 3), start + i, np.uint8) for i in range(n)])


class GreyClassifier(Judge):
    """Picks ``candidates[grey % len(candidates)]``."""

    name = "grey_classifier"

    def __init__(self):
        pass

    def spec(self):
        return {"judge": self.name}

    def classify(self, images, candidates):
        return [candidates[int(im[0, 0, 0]) % len(candidates)] for im in images]


class GreyDetector(Judge):
    """Finds the concept in images of odd grey level."""

    name = "grey_detector"

    def __init__(self):
        pass

    def spec(self):
        return {"judge": self.name, "threshold": 0.5}

    def detect(self, images, concept=None):
        return np.array([int(im[0, 0, 0]) % 2 == 1 for im in images])


class GreyClip(Judge):
    """Cosine = (grey - 3) / 10: negative for the darkest images (clipped to 0 by CLIP score)."""

    name = "grey_clip"

    def __init__(self):
        pass

    def spec(self):
        return {"judge": self.name}

    def score(self, images, texts):
        return np.array([(int(im[0, 0, 0]) - 3) / 10 for im in images])


JUDGES = {"classifier": GreyClassifier(), "detector": GreyDetector(), "clip": GreyClip()}


@pytest.fixture
def ctx(tiny_pipe_dir, tmp_path):
    cfg = parse_config({"model": str(tiny_pipe_dir),
                        "concept": {"name": "cat", "synonyms": ["kitten", "kitty"], "retain": ["dog", "fox"]},
                        "output_dir": str(tmp_path)})
    return prepare(cfg).ctx


def _metric(name, ctx, tmp_path):
    from evallearn.metrics.asr import ASR
    from evallearn.metrics.clip_score import ClipScore
    from evallearn.metrics.err import ERR
    from evallearn.metrics.ira import InDomainRetainAccuracy
    from evallearn.metrics.ua import UnlearningAccuracy

    if name == "asr":
        f = tmp_path / "p.csv"
        f.write_text("prompt,evaluation_seed\n" + "".join(f"p{i},{i}\n" for i in range(7)))
        return ASR(ASR.Params(prompts="csv", prompts_params={"source": str(f)}), ctx)
    return {"ua": lambda: UnlearningAccuracy(UnlearningAccuracy.Params(images_per_prompt=3), ctx),
            "ira": lambda: InDomainRetainAccuracy(InDomainRetainAccuracy.Params(images_per_prompt=3), ctx),
            "clip_score": lambda: ClipScore(ClipScore.Params(prompt_set="all", images_per_prompt=2), ctx),
            "err": lambda: ERR(ERR.Params(images_per_prompt=2), ctx)}[name]()


def _judges(metric):
    return {role: JUDGES[role] if role in JUDGES else JUDGES["classifier"] for role in metric.judge_refs()}


def _result(metric):
    r = metric.compute()
    return r.value, r.ci_low, r.ci_high, r.n, json.dumps(r.details, sort_keys=True, default=str), r.samples


@pytest.mark.parametrize("name", ["ua", "ira", "asr", "clip_score", "err"])
@pytest.mark.parametrize("cut", [1, 4])
def test_merging_two_shards_gives_what_the_whole_gives(ctx, tmp_path, name, cut):
    whole = _metric(name, ctx, tmp_path)
    reqs = whole.requests()
    assert len(reqs) > cut + 1
    judges = {"clip": GreyClip()} if name == "clip_score" else _judges(whole)
    whole.update(reqs, grey(len(reqs)), judges)
    a, b = _metric(name, ctx, tmp_path), _metric(name, ctx, tmp_path)
    a.update(reqs[:cut], grey(cut), judges)
    b.update(reqs[cut:], grey(len(reqs) - cut, start=cut), judges)
    a.merge(b)
    assert _result(a) == _result(whole)


def test_err_places_images_by_request_not_by_position(ctx, tmp_path):
    m = _metric("err", ctx, tmp_path)
    reqs = m.requests()
    images = grey(len(reqs))
    m.update(reqs, images, _judges(m))
    whole = m.compute()
    # the same images handed over in reverse order: every arm scores the same images
    m.reset()
    m.update(reqs[::-1], images[::-1], _judges(m))
    rev = m.compute()
    for arm in ("forgetting", "retention", "adversarial"):
        assert rev.details[arm] == whole.details[arm]
    assert rev.value == whole.value
    # hand-computed, 2 images per prompt: forgetting "a photo of a cat", "an image of a cat" (grey 0-3);
    # retention: dog (4-7), fox (8-11); adversarial: 2 templates x (kitten, kitty) (12-19).
    # Detector finds odd greys -> forgetting 2/4 not found, adversarial 4/8.
    # Retention: classifier picks [cat, dog, fox][grey % 3]; dog owns greys 4-7 (right at 4, 7),
    # fox owns 8-11 (right at 8, 11) -> 4/8.
    assert (whole.details["forgetting"], whole.details["retention"], whole.details["adversarial"]) == (0.5, 0.5, 0.5)
    assert whole.details["counts"] == {"forgetting": 4, "retention": 8, "adversarial": 8}
    assert whole.value == pytest.approx(0.5)
    assert {s["arm"] for s in whole.samples} == {"forgetting", "retention", "adversarial"}


def test_records_carry_their_request_and_grouping_is_an_aggregation(ctx, tmp_path):
    m = _metric("ira", ctx, tmp_path)
    reqs = m.requests()
    m.update(reqs, grey(len(reqs)), _judges(m))
    res = m.compute()
    assert set(m.state) == {"judges", "samples"}  # declared states only, no "concept:dog" keys
    assert all(isinstance(s, Sample) for s in m.state["samples"])
    first = res.samples[0]
    assert (first["prompt"], first["seed"], first["key"]) == (reqs[0].prompt, reqs[0].seed, reqs[0].key)
    # per concept by hand: candidates [cat, dog, fox]; image i is right when i % 3 names its concept
    owner = {r: c for c in ("dog", "fox") for r in m.concept_requests(c)}
    right = {"dog": [], "fox": []}
    for i, r in enumerate(reqs):
        right[owner[r]].append(["cat", "dog", "fox"][i % 3] == owner[r])
    assert res.details["per_concept"] == {c: pytest.approx(np.mean(v)) for c, v in right.items()}
    assert [s["concept"] for s in res.samples] == [owner[r] for r in reqs]
    assert res.judges == {"classifier": {"judge": "grey_classifier"}}
    assert not hasattr(m, "_judges")
    m.reset()
    assert m.state == {"judges": {}, "samples": []}


def test_aggregate_mean_interval_count_and_groups():
    samples = [Sample(1.0, {"g": "a"}), Sample(0.0, {"g": "b"}), Sample(1.0, {"g": "a"}), Sample(0.5, {"g": "b"})]
    agg = aggregate(samples, group_by="g")
    assert agg.value == pytest.approx(2.5 / 4) and agg.n == 4
    assert (agg.ci_low, agg.ci_high) == bootstrap_ci([1.0, 0.0, 1.0, 0.5])
    assert list(agg.groups) == ["a", "b"]  # first-seen order
    assert agg.group_values() == {"a": 1.0, "b": 0.25}
    assert (agg.groups["a"].n, agg.groups["b"].n) == (2, 2)
    assert np.isnan(aggregate([]).value) and aggregate([]).n == 0


class _Undeclared(Metric):
    name = "undeclared"

    def update(self, requests, images, judges):
        self._append("x", [1.0])


class _NotExact(Metric):
    name = "not_exact"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.add_state("running_median", list, reduce=None)


def test_merge_is_refused_where_it_would_not_be_exact():
    a, b = _NotExact(None, None), _NotExact(None, None)
    with pytest.raises(MergeError, match="running_median"):
        a.merge(b)
    u, v = _Undeclared(None, None), _Undeclared(None, None)
    u.update([], None, {})
    with pytest.raises(MergeError, match="not declared"):
        u.merge(v)
    with pytest.raises(MergeError, match="same metric"):
        u.merge(a)


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory):
    from helpers import mean_std_extractor

    return mean_std_extractor(tmp_path_factory.mktemp("fid") / "extractor.pt")


@pytest.fixture
def fid(ctx, tmp_path, extractor_file):
    from helpers import fake_coco

    from evallearn.metrics.fid import FID

    folder, cap = fake_coco(tmp_path)
    params = FID.Params(extractor=str(extractor_file), input_size=16, n_boot=20,
                        prompts_params={"source": str(cap), "images": str(folder)})
    return lambda: FID(params, ctx)


def test_fid_reference_is_an_input_filled_once_and_shards_merge_exactly(fid):
    from evallearn.metrics.fid import fid_from_features

    rng = np.random.default_rng(3)
    gen = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    whole = fid()
    reqs = whole.requests()
    whole.update(reqs, gen, {})
    a, b = fid(), fid()
    a.update(reqs[:2], gen[:2], {})
    b.update(reqs[2:], gen[2:], {})
    a.merge(b)
    ra, rw = a.compute(), whole.compute()
    assert ra.details["n_reference"] == rw.details["n_reference"] == 6  # not re-added per update
    assert (ra.value, ra.ci_low, ra.ci_high, ra.n) == (rw.value, rw.ci_low, rw.ci_high, rw.n)
    ref = whole.features(whole.reference_images())
    assert rw.value == pytest.approx(fid_from_features(whole.features(gen).astype(float), ref.astype(float)))
    # reset clears the generated images and keeps the reference (before and after share it)
    whole.reset()
    assert whole.state["generated"] == [] and len(whole.state["reference"]) == 6


def test_fid_takes_an_explicit_reference_and_refuses_to_merge_shards_that_differ(fid):
    rng = np.random.default_rng(4)
    own = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    gen = rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    a = fid()
    a.update_reference(own)
    a.update(a.requests()[:3], gen, {})
    assert a.compute().details["n_reference"] == 4  # the given set, not the dataset's 6
    b = fid()
    b.update(b.requests()[3:], gen, {})  # b's reference: the dataset's
    with pytest.raises(MergeError, match="reference"):
        a.merge(b)


def test_per_sample_records_round_trip_through_results():
    from evallearn.results import MetricResult

    rec = {"value": 1.0, "prompt": "a photo of a dog", "seed": 3, "key": "k", "concept": "dog"}
    res = MetricResult(value=1.0, n=1, higher_is_better=True, samples=[rec])
    assert MetricResult.model_validate(json.loads(res.model_dump_json())).samples == [rec]
    assert "samples" not in json.loads(MetricResult(value=1.0, n=1, higher_is_better=True).model_dump_json())


def test_metrics_read_no_side_channels():
    # judges arrive as update()'s argument, requests from the runner, state through add_state
    from pathlib import Path

    import evallearn.metrics as pkg

    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        text = path.read_text()
        for bad in ("self._judges", "extras[", 'f"concept:', 'f"group:', 'f"type:', 'f"predicted:'):
            assert bad not in text, f"{path.name} uses {bad}"
