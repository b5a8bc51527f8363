"""How probe images are scored: a forced choice needs an alternative (unknown concepts are refused),
the paper's ImageNet top-1/top-5 and CLIP score are available, and every number carries its
chance floor. Tiny random models stand in for the real weights (which cannot be downloaded here)."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from evallearn.errors import UserError


def _ctx(tiny_pipe_dir, tmp_path, concept, probes=("noise_based",)):
    from evallearn.config import parse_config
    from evallearn.runner import prepare

    return prepare(parse_config({"model": str(tiny_pipe_dir), "concept": concept, "output_dir": str(tmp_path),
                                 "probes": list(probes)})).ctx


def _probe(ctx, name="standard_prompt", **params):
    from evallearn import registry

    cls = registry.probes.get(name)
    return cls(cls.parse_params(params, "test"), ctx)


def _cli(*args):
    code = "from evallearn.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_probe_command_refuses_an_unknown_concept_without_retain(tiny_pipe_dir, tmp_path):
    base = ["probe", "--concept", "snoopy", "--model", str(tiny_pipe_dir), "--probes", "noise_based",
            "--dry-run", "--output-dir", str(tmp_path)]
    r = _cli(*base)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--retain" in lines[0] and "Traceback" not in r.stderr
    ok = _cli(*base, "--retain", "dog,car")
    assert ok.returncode == 0, ok.stderr
    written = (tmp_path / "probe-snoopy.yaml").read_text()
    assert "- dog" in written and "- car" in written
    # a rule that can say "not the concept" needs no alternatives
    from evallearn.probes.cli import build_probe_config

    cfg = build_probe_config("snoopy", str(tiny_pipe_dir), ["noise_based"], judge="clip_score")
    assert cfg["concept"]["retain"] == [] and cfg["probes"][1]["params"]["scoring"] == "clip_score"
    with pytest.raises(UserError, match="--retain"):  # retain naming only the concept itself is no choice
        build_probe_config("snoopy", str(tiny_pipe_dir), ["noise_based"], retain=["snoopy"])


def test_probe_command_num_prompts_zero_is_an_error(tiny_pipe_dir, tmp_path):
    r = _cli("probe", "--concept", "airliner", "--model", str(tiny_pipe_dir), "--probes", "noise_based",
             "--num-prompts", "0", "--dry-run", "--output-dir", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--num-prompts" in lines[0]


def test_a_config_with_no_alternative_is_refused_before_any_weights(tiny_pipe_dir, tmp_path):
    with pytest.raises(UserError, match="concept.retain"):
        _ctx(tiny_pipe_dir, tmp_path, {"name": "snoopy"})
    with pytest.raises(UserError, match="concept.retain"):  # the concept itself is no alternative
        _ctx(tiny_pipe_dir, tmp_path, {"name": "snoopy", "retain": ["Snoopy"]})
    ctx = _ctx(tiny_pipe_dir, tmp_path, {"name": "snoopy", "retain": ["dog", "Dog", "dog"]})
    assert _probe(ctx).candidates() == ["snoopy", "dog"]


def test_a_forced_choice_with_one_candidate_is_impossible(tiny_clip_dir):
    from evallearn.judges.clip import ClipJudge

    judge = ClipJudge(ClipJudge.Params(clip_model=str(tiny_clip_dir)))
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(UserError, match="two different candidates"):
        judge.classify(noise, ["snoopy"])
    with pytest.raises(UserError, match="two different candidates"):
        judge.classify(noise, ["snoopy", "snoopy"])
    assert set(judge.classify(noise, ["snoopy", "dog"])) <= {"snoopy", "dog"}


def test_chance_floors_and_paper_judges(tiny_pipe_dir, tmp_path):
    airliner = _ctx(tiny_pipe_dir, tmp_path, {"name": "airliner"})
    assert _probe(airliner).chance() == pytest.approx(1 / 10)
    gogh = _ctx(tiny_pipe_dir, tmp_path, {"name": "Van Gogh", "kind": "style"})
    assert _probe(gogh).chance() == pytest.approx(1 / 3)
    assert _probe(airliner, judge="imagenet").chance() == 0.001  # scoring auto -> imagenet top-1
    assert _probe(airliner, scoring="imagenet_top5").chance() == 0.005
    assert _probe(airliner, scoring="clip_score").chance() is None
    with pytest.raises(UserError, match="style"):
        _probe(gogh, scoring="imagenet").check()
    with pytest.raises(UserError, match="needs judge: imagenet"):
        _probe(airliner, judge="clip", scoring="imagenet").judge_refs()
    # clip_score: the paper's CLIP ViT-B/32 scores; the selector is then another CLIP
    refs = _probe(airliner, "noise_based", scoring="clip_score").judge_refs()
    assert refs["classifier"].params["clip_model"] == "openai/clip-vit-base-patch32"
    assert refs["selector"].params["clip_model"] == "openai/clip-vit-large-patch14"
    assert _probe(gogh, scoring="clip_score").judge_refs()["classifier"].params["template"] == \
        "a painting in the style of {}"
    # how an image is scored does not change the image: same storage key
    setting = {"eta": 1.0}
    assert _probe(airliner, "noise_based").key("erased", setting, ("p", 1)) == \
        _probe(airliner, "noise_based", judge="imagenet").key("erased", setting, ("p", 1))


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    from transformers import ResNetConfig, ResNetForImageClassification

    labels = {i: f"class {i}" for i in range(1000)}
    labels[404], labels[491] = "airliner", "chain saw, chainsaw"
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("resnet")
    ResNetForImageClassification(cfg).save_pretrained(folder)
    return folder


def test_imagenet_top1_top5_over_all_classes(tiny_pipe_dir, tmp_path, tiny_resnet):
    from evallearn.judges.imagenet import ImageNetJudge

    judge = ImageNetJudge(ImageNetJudge.Params(model=str(tiny_resnet)))
    images = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    p = judge.probs(images)  # the real loading and forward path
    assert p.shape == (3, 1000) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (judge.topk_hits(images, int(p[0].argmax()), 1) == (p.argmax(1) == p[0].argmax())).all()
    assert judge.class_index("chainsaw") == 491
    # hand-built probabilities: class 404 ranked 1st, 3rd and last
    P = np.full((3, 1000), 1e-4)
    P[0, 404], P[0, 7] = 0.9, 0.05
    P[1, [1, 2, 404, 5]] = [0.5, 0.3, 0.1, 0.05]
    P[2, 404], P[2, 9] = 0.0, 0.8
    judge.probs = lambda images: P
    assert judge.topk_hits(images, 404, 1).tolist() == [True, False, False]
    assert judge.topk_hits(images, 404, 5).tolist() == [True, True, False]
    ctx = _ctx(tiny_pipe_dir, tmp_path, {"name": "airliner"})
    env = SimpleNamespace(judges={"classifier": judge})
    top1, top5 = _probe(ctx, judge="imagenet"), _probe(ctx, scoring="imagenet_top5")
    assert top1.recovered(env, images).tolist() == [1.0, 0.0, 0.0]
    assert top5.recovered(env, images).tolist() == [1.0, 1.0, 0.0]
    res = top5.result(env, top5.recovered(env, images), {})
    assert res.chance == 0.005 and res.scoring == {"rule": "imagenet_top5", "chance": 0.005, "top_k": 5,
                                                   "imagenet_class": 404}


def test_clip_score_is_100_times_the_cosine_with_the_papers_text(tiny_pipe_dir, tmp_path, tiny_clip_dir):
    from evallearn.judges.clip import ClipJudge
    from evallearn.models.clip import clip_embed_images, clip_embed_texts, load_clip

    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for concept, text in (({"name": "airliner"}, "a photo of a airliner"),
                          ({"name": "Van Gogh", "kind": "style"}, "a painting in the style of Van Gogh")):
        probe = _probe(_ctx(tiny_pipe_dir, tmp_path, concept), scoring="clip_score",
                       judge_params={"clip_model": str(tiny_clip_dir)})
        ref = probe.judge_refs()["classifier"]
        judge = ClipJudge(ClipJudge.parse_params(ref.params, "t"))
        env = SimpleNamespace(judges={"classifier": judge})
        assert probe.clip_text(env) == text
        model, proc = load_clip(str(tiny_clip_dir))
        cos = (clip_embed_images(model, proc, images) * clip_embed_texts(model, proc, [text] * 3)).sum(-1).numpy()
        assert np.allclose(probe.recovered(env, images), 100 * cos, atol=1e-4)
        res = probe.result(env, probe.recovered(env, images), {})
        assert res.chance is None and res.scoring["rule"] == "clip_score" and res.scoring["text"] == text


def test_every_probe_number_is_shown_with_its_chance_floor():
    from evallearn.probes.report import probe_html, probe_rows
    from evallearn.probes.verdict import verdict

    def r(v, chance, rule):
        return {"value": v, "ci_low": v, "ci_high": v, "n": 20, "higher_is_better": False, "kind": "recovery",
                "chance": chance, "scoring": {"rule": rule}, "judges": {},
                "details": {"per_item": [1.0] * int(v * 20) + [0.0] * (20 - int(v * 20))}}

    res = {"standard_prompt": r(0.1, 0.1, "choice"), "noise_based": r(0.5, 0.1, "choice"),
           "inpainting": r(25.0, None, "clip_score")}
    res["inpainting"]["details"]["per_item"] = [25.0] * 20
    results = {"probes": {"results": res, "verdict": verdict(res)}}
    names = [row[0] for row in probe_rows(results)]
    assert names[0] == "probe standard_prompt ↓ (chance 0.1)" and "chance 0.1" in names[1]
    assert "no chance floor" in names[2]
    page = probe_html(results)
    assert page.count("chance 0.1") == 2 and "Holm" in page


def _torchvision_resnet_state(seed=0):
    """A tiny ResNet in torchvision's layout (bottleneck v1.5): stem 8, layer1 1 block -> 16, layer2 2 blocks -> 32."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def conv(o, i, k):
        return torch.randn(o, i, k, k, generator=g) * (2 / (i * k * k)) ** 0.5

    def bn(prefix, c, sd):
        sd[prefix + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".bias"] = 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[prefix + ".running_var"] = 1 + 0.2 * torch.rand(c, generator=g)
        sd[prefix + ".num_batches_tracked"] = torch.tensor(7)

    sd = {"conv1.weight": conv(8, 3, 7)}
    bn("bn1", 8, sd)
    cin = 8
    for L, (blocks, out) in enumerate([(1, 16), (2, 32)], start=1):
        for b in range(blocks):
            p, w = f"layer{L}.{b}.", out // 4
            sd[p + "conv1.weight"], sd[p + "conv2.weight"], sd[p + "conv3.weight"] = \
                conv(w, cin, 1), conv(w, w, 3), conv(out, w, 1)
            for j, c in ((1, w), (2, w), (3, out)):
                bn(f"{p}bn{j}", c, sd)
            if b == 0:
                sd[p + "downsample.0.weight"] = conv(out, cin, 1)
                bn(p + "downsample.1", out, sd)
            cin = out
    sd["fc.weight"], sd["fc.bias"] = 0.1 * torch.randn(1000, 32, generator=g), 0.1 * torch.randn(1000, generator=g)
    return sd


def _torchvision_forward(sd, x):
    """torchvision's ResNet forward (v1.5: the stride in the 3x3 convolution), written out."""
    import torch.nn.functional as F

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for L, (blocks, stride) in enumerate([(1, 1), (2, 2)], start=1):
        for b in range(blocks):
            p, s = f"layer{L}.{b}.", stride if b == 0 else 1
            out = F.relu(bn(F.conv2d(x, sd[p + "conv1.weight"]), p + "bn1"))
            out = F.relu(bn(F.conv2d(out, sd[p + "conv2.weight"], stride=s, padding=1), p + "bn2"))
            out = bn(F.conv2d(out, sd[p + "conv3.weight"]), p + "bn3")
            short = bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=s), p + "downsample.1") \
                if p + "downsample.0.weight" in sd else x
            x = F.relu(out + short)
    return x.mean((2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


def test_torchvision_resnet_weights_load_as_the_papers_classifier(tmp_path):
    import torch
    from PIL import Image

    from evallearn.judges.imagenet import MEAN, STD, ImageNetJudge, preprocess

    sd = _torchvision_resnet_state()
    path = tmp_path / "resnet50-v2.pth"
    torch.save(sd, path)
    judge = ImageNetJudge(ImageNetJudge.Params(model=str(path), resize=232, resample="bilinear"))
    images = np.random.default_rng(3).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    # torchvision IMAGENET1K_V2 preprocessing: short side 232 bilinear, centre crop 224
    by_hand = np.stack([(np.asarray(Image.fromarray(im).resize((232, 232), Image.BILINEAR).crop((4, 4, 228, 228)),
                                    dtype=np.float32) / 255 - MEAN) / STD for im in images]).transpose(0, 3, 1, 2)
    x = preprocess(images, resize=232, resample="bilinear")
    assert np.allclose(x, by_hand, atol=1e-6)
    expect = torch.softmax(_torchvision_forward(sd, torch.from_numpy(by_hand)), -1).numpy()
    assert np.allclose(judge.probs(images), expect, atol=1e-5)
    assert (judge.topk_hits(images, int(expect[0].argmax()), 1) == (expect.argmax(1) == expect[0].argmax())).all()
    with pytest.raises(UserError, match="no class names"):
        judge.class_index("airliner")
    with pytest.raises(UserError, match="does not exist"):
        ImageNetJudge(ImageNetJudge.Params(model=str(tmp_path / "missing.pth"))).probs(images)


def test_probe_judges_are_checked_at_prepare_like_the_metrics(tiny_pipe_dir, tmp_path):
    concept = {"name": "cat", "retain": ["dog"]}
    with pytest.raises(UserError, match="probes 'standard_prompt' judge 'classifier'"):
        _ctx(tiny_pipe_dir, tmp_path, concept,
             [{"name": "standard_prompt", "params": {"judge": "clip", "judge_params": {"no_such": 1}}}])
    with pytest.raises(UserError, match="forced choice.*'q16' cannot"):  # a detector cannot choose a class
        _ctx(tiny_pipe_dir, tmp_path, concept, [{"name": "standard_prompt", "params": {"judge": "q16"}}])
    with pytest.raises(UserError, match="judge 'toy_classifier'"):  # the toy world's judge, on another model
        _ctx(tiny_pipe_dir, tmp_path, concept, [{"name": "standard_prompt", "params": {"judge": "toy_classifier"}}])
