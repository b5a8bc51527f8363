"""ASR, ERR, FID, TIFA against hand-computed values; a missing extractor/prompts file names the file."""

import csv

import numpy as np
import pytest

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.judges.base import Judge
from evallearn.runner import prepare


class Detector(Judge):
    name = "fixed_detector"

    def __init__(self, flags):
        self.flags = list(flags)

    def spec(self):
        return {"judge": self.name, "threshold": 0.5}

    def detect(self, images, concept=None):
        out, self.flags = np.array(self.flags[: len(images)], bool), self.flags[len(images):]
        return out


class Classifier(Judge):
    name = "fixed_classifier"

    def __init__(self, labels):
        self.labels = list(labels)

    def spec(self):
        return {"judge": self.name}

    def classify(self, images, candidates):
        out, self.labels = self.labels[: len(images)], self.labels[len(images):]
        return out


@pytest.fixture
def ctx(tiny_pipe_dir, tmp_path):
    cfg = parse_config({"model": str(tiny_pipe_dir),
                        "concept": {"name": "cat", "synonyms": ["kitten"], "retain": ["dog"]},
                        "output_dir": str(tmp_path)})
    return prepare(cfg).ctx


def imgs(n):
    return np.zeros((n, 8, 8, 3), np.uint8)


def test_asr_on_user_csv_is_share_of_detected(ctx, tmp_path):
    from evallearn.metrics.asr import ASR

    f = tmp_path / "p.csv"
    f.write_text("prompt,evaluation_seed\na,11\nb,12\nc,13\nd,14\n")
    m = ASR(ASR.Params(prompts="csv", prompts_params={"source": str(f)}), ctx)
    reqs = m.requests()
    assert [(r.prompt, r.seed) for r in reqs] == [("a", 11), ("b", 12), ("c", 13), ("d", 14)]
    m.update(reqs, imgs(4), {"detector": Detector([1, 0, 1, 1])})
    res = m.compute()
    assert res.value == pytest.approx(0.75) and not res.higher_is_better
    assert res.ci_low <= 0.75 <= res.ci_high and res.judges["detector"]["threshold"] == 0.5


def test_asr_classifier_judge_counts_the_erased_concept(ctx, tmp_path):
    from evallearn.metrics.asr import ASR

    f = tmp_path / "adv.csv"
    f.write_text("target_prompt,adversarial_prompt\nt1,x y\nt2,z w\nt3,q r\n")
    p = tmp_path / "p.csv"
    p.write_text("prompt\nt1\nt2\nt3\n")
    m = ASR(ASR.Params(prompts="csv", prompts_params={"source": str(p)}, precomputed=str(f)), ctx)
    reqs = m.requests()
    assert [r.prompt for r in reqs] == ["x y", "z w", "q r"]
    m.update(reqs, imgs(3), {"detector": Classifier(["cat", "dog", "dog"])})
    assert m.compute().value == pytest.approx(1 / 3)


def test_asr_uses_each_i2p_rows_guidance_when_asked(ctx, tmp_path):
    from evallearn.metrics.asr import ASR

    f = tmp_path / "i2p.csv"
    f.write_text("prompt,categories,evaluation_seed,evaluation_guidance\n"
                 "a,sexual,11,7\nb,sexual,12,12.5\nc,sexual,13,\n")
    own = ASR(ASR.Params(prompts="i2p", prompts_params={"source": str(f)}, dataset_guidance=True), ctx)
    run = ctx.request("x", 0).guidance_scale
    assert [(r.prompt, r.seed, r.guidance_scale) for r in own.requests()] == [
        ("a", 11, 7.0), ("b", 12, 12.5), ("c", 13, run)]
    default = ASR(ASR.Params(prompts="i2p", prompts_params={"source": str(f)}), ctx)
    assert {r.guidance_scale for r in default.requests()} == {run}


def test_asr_attack_and_precomputed_are_exclusive(ctx):
    from evallearn.metrics.asr import ASR

    with pytest.raises(UserError, match="either attack or precomputed"):
        ASR(ASR.Params(attack="ring_a_bell", precomputed="x.csv"), ctx)


def test_err_is_harmonic_mean_of_the_three_arms(ctx):
    from evallearn.metrics.err import ERR, hmean

    assert hmean([0.5, 1.0]) == pytest.approx(2 / 3) and hmean([0.0, 1.0]) == 0.0
    m = ERR(ERR.Params(max_prompts=2), ctx)
    reqs = m.requests()
    arms = m.arm_prompts()
    assert [len(v) for v in arms.values()] == [2, 2, 2]  # forgetting, retention, adversarial
    assert all("kitten" in p for p, _ in arms["adversarial"])
    # forgetting: detector finds the concept in 1 of 2 -> 0.5; retention: 2/2 correct -> 1;
    # adversarial: 0 of 2 found -> 1.   ERR = 3 / (2 + 1 + 1) = 0.75
    m.update(reqs, imgs(6), {"detector": Detector([1, 0, 0, 0]), "classifier": Classifier(["dog", "dog"])})
    res = m.compute()
    assert res.details["forgetting"] == 0.5 and res.details["retention"] == 1.0
    assert res.details["adversarial"] == 1.0
    assert res.value == pytest.approx(0.75) and res.ci_low <= 0.75 <= res.ci_high


def test_err_refuses_an_empty_arm(tiny_pipe_dir, tmp_path):
    from evallearn.metrics.err import ERR

    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "output_dir": str(tmp_path)})
    with pytest.raises(UserError, match="adversarial arm has no prompts"):
        ERR(ERR.Params(), prepare(cfg).ctx).requests()


def test_frechet_distance_matches_closed_form_on_gaussians():
    from evallearn.metrics.fid import fid_from_features, frechet_distance

    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 0.25]), np.diag([9.0, 1.0, 0.25])
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(np.diag(s1) + np.diag(s2) - 2 * np.sqrt(np.diag(s1) * np.diag(s2)))
    assert closed == pytest.approx(5 + (1 + 9 - 6) + (4 + 1 - 4) + 0)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed)
    # a full (non-diagonal) covariance against itself shifted: FID = ||shift||^2
    a = np.array([[2.0, 0.6], [0.6, 1.0]])
    assert frechet_distance([0, 0], a, [3, 4], a) == pytest.approx(25.0)
    # samples from the two Gaussians: the estimate converges to the closed form
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal(mu1, s1, 20000)
    y = rng.multivariate_normal(mu2, s2, 20000)
    assert fid_from_features(x, y) == pytest.approx(closed, rel=0.03)


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory):
    from helpers import mean_std_extractor

    return mean_std_extractor(tmp_path_factory.mktemp("fid") / "extractor.pt")


def test_fid_metric_with_a_torchscript_extractor(ctx, tmp_path, extractor_file):
    from helpers import fake_coco

    from evallearn.metrics.fid import FID

    folder, cap = fake_coco(tmp_path)
    m = FID(FID.Params(extractor=str(extractor_file), input_size=16, n_boot=20,
                       prompts_params={"source": str(cap), "images": str(folder)}), ctx)
    reqs = m.requests()
    assert len(reqs) == 6
    gen = np.random.default_rng(7).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    m.update(reqs, gen, {})
    res = m.compute()
    f_gen, f_ref = m.features(gen), m.features(m.dataset().reference_images(m.records()))
    from evallearn.metrics.fid import fid_from_features

    assert res.value == pytest.approx(fid_from_features(f_gen.astype(float), f_ref.astype(float)), rel=1e-6)
    assert res.value > 0 and res.n == 6 and res.details["n_reference"] == 6


def test_fid_features_accept_reference_images_of_different_sizes(ctx, extractor_file):
    # COCO's val2014 images come at their own sizes (640x480, 480x640, ...): each is resized to the
    # extractor's input on its own, so a batch of mixed sizes is scored, not a stacking error.
    import torch
    import torch.nn.functional as F

    from evallearn.metrics.fid import FID

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)]
    m = FID(FID.Params(extractor=str(extractor_file), input_size=8), ctx)
    feats = m.features(images)
    for im, f in zip(images, feats, strict=True):
        x = F.interpolate(torch.from_numpy(im).permute(2, 0, 1).float()[None], size=(8, 8), mode="bilinear",
                          align_corners=False) / 127.5 - 1.0
        expect = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)[0].numpy()
        np.testing.assert_allclose(f, expect, rtol=1e-5, atol=1e-6)


def test_fid_without_extractor_names_the_file(ctx, monkeypatch):
    from evallearn.metrics import fid

    monkeypatch.setattr(fid, "default_extractor_path", lambda: None)
    with pytest.raises(UserError, match="default_1.pt"):
        fid.FID(fid.FID.Params(), ctx).extractor_path()
    with pytest.raises(UserError, match="extractor not found: .*nope.pt"):
        fid.load_extractor("nope.pt", "cpu")


class FakeVQA(Judge):
    name = "fake_vqa"

    def __init__(self, answers):
        self.answers = answers

    def spec(self):
        return {"judge": self.name}

    def choose(self, images, questions, choices):
        mc = [self.answers[q] for q in questions]
        return mc, mc


def test_tifa_is_mean_over_captions_of_question_accuracy(ctx, tmp_path):
    import json

    from evallearn.metrics.tifa import TIFA

    qa = [{"id": "a", "caption": "a red bus", "question": "is there a bus?", "choices": ["yes", "no"], "answer": "yes"},
          {"id": "a", "caption": "a red bus", "question": "what color is the bus?",
           "choices": ["red", "blue"], "answer": "red"},
          {"id": "b", "caption": "two cats", "question": "how many cats?", "choices": ["1", "2"], "answer": "2"}]
    f = tmp_path / "tifa.json"
    f.write_text(json.dumps(qa))
    m = TIFA(TIFA.Params(prompts_params={"source": str(f)}), ctx)
    reqs = m.requests()
    assert [r.prompt for r in reqs] == ["a red bus", "two cats"]
    answers = {"is there a bus?": "yes", "what color is the bus?": "blue", "how many cats?": "2"}
    m.update(reqs, imgs(2), {"vqa": FakeVQA(answers)})
    # caption a: 1/2, caption b: 1/1 -> TIFA = 0.75 (per-question accuracy would be 2/3)
    assert m.compute().value == pytest.approx(0.75)


def test_tifa_question_types_come_from_element_type(ctx, tmp_path):
    # TIFA's question files name the question's type `element_type` (object, color, count, ...).
    import json

    from evallearn.datasets.tifa import TifaQuestions

    qa = [{"id": "a", "caption": "a red bus", "question": "is there a bus?", "choices": ["yes", "no"],
           "answer": "yes", "element_type": "object"},
          {"id": "a", "caption": "a red bus", "question": "what color is the bus?", "choices": ["red", "blue"],
           "answer": "red", "element_type": "color"}]
    f = tmp_path / "tifa.json"
    f.write_text(json.dumps(qa))
    recs = TifaQuestions(TifaQuestions.Params(source=str(f))).load(ctx)
    assert [q["type"] for q in recs[0].meta["qas"]] == ["object", "color"]


def test_vqa_exact_choice_needs_no_matcher():
    from evallearn.judges.vqa import VQAJudge

    j = VQAJudge(VQAJudge.Params(matcher="/nonexistent"))
    assert j.match("Red.", ["blue", "red"]) == "red"
    with pytest.raises(UserError, match="matcher|nonexistent"):
        j.match("crimson", ["blue", "red"])


def test_q16_without_prompts_names_the_file(ctx, tmp_path):
    from evallearn.judges.q16 import Q16Judge, load_prompts

    with pytest.raises(UserError, match="prompts.p"):
        Q16Judge(Q16Judge.Params()).score(imgs(1))
    with pytest.raises(UserError, match="missing.npy"):
        load_prompts(str(tmp_path / "missing.npy"))


def test_metric_with_missing_judge_weights_says_which_file(ctx, tmp_path):
    """Through the runner's judge loading: ASR judged by Q16 with a prompts file that is absent."""
    from evallearn.metrics.asr import ASR
    from evallearn.runner import Judges

    f = tmp_path / "p.csv"
    f.write_text("prompt\na\n")
    m = ASR(ASR.Params(prompts="csv", prompts_params={"source": str(f)}, judge="q16",
                       judge_params={"prompts": str(tmp_path / "q16_prompts_ViT-L-14.npy")}), ctx)
    judges = Judges("cpu").for_metric(m)
    with pytest.raises(UserError, match="q16_prompts_ViT-L-14.npy"):
        m.update(m.requests(), imgs(1), judges)


def test_precomputed_csv_column_is_required(tmp_path):
    from evallearn.metrics.asr import read_precomputed

    f = tmp_path / "x.csv"
    with f.open("w", newline="") as fh:
        csv.writer(fh).writerows([["foo"], ["bar"]])
    with pytest.raises(UserError, match="adversarial_prompt"):
        read_precomputed(str(f))
