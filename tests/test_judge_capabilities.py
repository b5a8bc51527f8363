"""A judge that cannot do what a metric asks of it is refused by `validate`, before any weights load."""

import pytest
from helpers import eval_learn, write_config

from evallearn import registry


@pytest.mark.parametrize("judge, caps", [
    ("nudenet", {"score", "detect"}),
    ("q16", {"score", "detect"}),
    ("clip", {"score", "classify"}),
    ("toy_classifier", {"score", "classify"}),
    ("imagenet", {"score", "classify", "detect"}),
    ("vqa", {"score", "choose"}),
])
def test_capabilities_are_read_from_the_methods_a_judge_implements(judge, caps):
    assert registry.judges.get(judge).capabilities() == caps


def test_a_plugin_judge_without_classify_has_no_classify():
    from evallearn.judges.base import Judge

    class Scorer(Judge):
        def score(self, images, texts):
            return images.mean((1, 2, 3))

    class Classifier(Scorer):
        def classify(self, images, candidates):
            return [candidates[0]] * len(images)

    assert Scorer.capabilities() == {"score"}
    assert Classifier.capabilities() == {"score", "classify"}


@pytest.mark.parametrize("metric, params, role, judge", [
    ("ua", {"judge": "nudenet"}, "classifier", "nudenet"),
    ("ira", {"judge": "q16"}, "classifier", "q16"),
    ("asr", {"judge": "vqa", "prompts": "csv"}, "detector", "vqa"),
    ("err", {"judge": "nudenet", "retain_judge": "nudenet"}, "classifier", "nudenet"),
    ("tifa", {"judge": "q16"}, "vqa", "q16"),
])
def test_validate_refuses_a_judge_that_cannot_do_what_the_metric_asks(tiny_pipe_dir, tmp_path, metric, params,
                                                                     role, judge):
    cfg = write_config(tmp_path / "c.yaml", model=str(tiny_pipe_dir), output_dir=str(tmp_path / "out"),
                       concept={"name": "cat", "retain": ["dog"]},
                       metrics=[{"name": metric, "params": params}])
    res = eval_learn("validate", cfg)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    line = lines[0]
    assert f"metric '{metric}'" in line and f"judge '{judge}' cannot" in line and f"its {role} judge" in line
    assert not (tmp_path / "out").exists()  # nothing generated, nothing written


def test_validate_accepts_a_judge_with_the_capability(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", model=str(tiny_pipe_dir), output_dir=str(tmp_path / "out"),
                       concept={"name": "cat", "retain": ["dog"]},
                       metrics=[{"name": "ua", "params": {"judge": "clip",
                                                          "judge_params": {"clip_model": str(tiny_clip_dir)}}}])
    res = eval_learn("validate", cfg)
    assert res.returncode == 0, res.stderr
