"""ImageNet and Q16 judges on tiny random models saved locally; NudeNet when installed."""

import numpy as np
import pytest

from evallearn.errors import UserError

LABELS = ["tench, Tinca tinca", "garbage truck, dustcart", "church, church building", "parachute, chute"]


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4,
                       id2label=dict(enumerate(LABELS)), label2id={v: k for k, v in enumerate(LABELS)})
    folder = tmp_path_factory.mktemp("resnet")
    ResNetForImageClassification(cfg).eval().save_pretrained(folder)
    return folder


def test_imagenet_top1_maps_labels_to_candidate_words(resnet_dir):
    import torch
    from transformers import ResNetForImageClassification

    from evallearn.judges.imagenet import ImageNetJudge, preprocess

    j = ImageNetJudge(ImageNetJudge.Params(model=str(resnet_dir)))
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    model = ResNetForImageClassification.from_pretrained(str(resnet_dir)).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.from_numpy(preprocess(images))).logits
    top = logits.argmax(1).tolist()
    words = [LABELS[k].split(",")[0] for k in top]
    assert j.classify(images, ["tench", "garbage truck", "church", "parachute"]) == words
    assert j.classify(images, ["garbage truck"]) == words  # top-1 over all classes, not the candidates
    assert list(j.detect(images, "church")) == [w == "church" for w in words]
    np.testing.assert_allclose(j.score(images, ["parachute"] * 3), torch.softmax(logits, 1)[:, 3].numpy(), rtol=1e-5)
    with pytest.raises(UserError, match="not an ImageNet class"):
        j.class_index("spaceship")


def test_imagenet_missing_weights_names_the_model():
    from evallearn.judges.imagenet import ImageNetJudge

    with pytest.raises(UserError, match="hf download microsoft/resnet-50"):
        ImageNetJudge(ImageNetJudge.Params()).probs(np.zeros((1, 8, 8, 3), np.uint8))


def test_q16_softmax_over_learned_prompts(tiny_clip_dir, tmp_path):
    import torch

    from evallearn.judges.q16 import Q16Judge
    from evallearn.models.clip import clip_embed_images, load_clip

    model, proc = load_clip(str(tiny_clip_dir))
    images = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    emb = clip_embed_images(model, proc, images)
    prompts = np.stack([-emb[0].numpy(), emb[0].numpy()]).astype(np.float16)  # row 1 = image 0's direction
    f = tmp_path / "q16.npy"
    np.save(f, prompts)
    j = Q16Judge(Q16Judge.Params(clip_model=str(tiny_clip_dir), prompts=str(f)))
    p = j.probabilities(images)
    pr = torch.nn.functional.normalize(torch.from_numpy(prompts.astype(np.float32)), dim=-1)
    np.testing.assert_allclose(p, torch.softmax(100 * emb @ pr.T, -1).numpy(), atol=1e-5)
    assert p[0, 1] > 0.99 and j.detect(images)[0]
    np.save(f, prompts[:, :3])
    from evallearn.judges.q16 import load_prompts

    load_prompts.cache_clear()
    with pytest.raises(UserError, match="prompts of that CLIP model"):
        j.probabilities(images)


def test_nudenet_detector_runs_on_blank_images():
    pytest.importorskip("nudenet")
    from evallearn.judges.nudenet import NudeNetJudge

    j = NudeNetJudge(NudeNetJudge.Params())
    assert list(j.detect(np.zeros((2, 64, 64, 3), np.uint8))) == [False, False]
    assert j.spec()["preset"] == "default" and j.spec()["rule"]["threshold"] == 0.5


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for a hostile prompts file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["prompts.p", "prompts.pkl", "prompts.npy", "prompts.safetensors"])
def test_q16_never_unpickles_a_prompts_file(tmp_path, name):
    import pickle

    from evallearn.judges.q16 import Q16Judge, load_prompts

    marker = tmp_path / "payload-ran"
    f = tmp_path / name
    f.write_bytes(pickle.dumps(_Payload(marker)))
    load_prompts.cache_clear()
    with pytest.raises(UserError) as err:
        load_prompts(str(f))
    assert not marker.exists()
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg
    if f.suffix not in (".npy", ".safetensors"):  # refused by `validate` too, before any file is read
        with pytest.raises(UserError, match="pickles"):
            Q16Judge.parse_params({"prompts": str(f)}, "judge 'q16'")
    assert not marker.exists()


def test_q16_npy_object_array_is_refused(tmp_path):
    from evallearn.judges.q16 import load_prompts

    marker = tmp_path / "payload-ran"
    f = tmp_path / "prompts.npy"
    np.save(f, np.array([_Payload(marker), 1], dtype=object), allow_pickle=True)
    load_prompts.cache_clear()
    with pytest.raises(UserError, match="plain array"):
        load_prompts(str(f))
    assert not marker.exists()


def test_q16_reads_safetensors_prompts(tmp_path):
    from safetensors.numpy import save_file

    from evallearn.judges.q16 import load_prompts

    prompts = np.arange(8, dtype=np.float32).reshape(2, 4)
    f = tmp_path / "prompts.safetensors"
    save_file({"prompts": prompts}, str(f))
    load_prompts.cache_clear()
    np.testing.assert_array_equal(load_prompts(str(f)), prompts)


def test_vqa_blip2_gets_tifas_multiple_choice_prompt(monkeypatch):
    from evallearn.judges import vqa

    seen = []

    class Inputs(dict):
        def to(self, device):
            return self

    class Processor:
        def __call__(self, images, text, **kw):
            seen.extend(text)
            return Inputs()

        def batch_decode(self, ids, skip_special_tokens=True):
            return ["cat"] * len(seen)

    class Model:
        def generate(self, **kw):
            return [[0]] * len(seen)

    monkeypatch.setattr(vqa, "_load_vqa", lambda ref, device: ("Blip2ForConditionalGeneration", Model(), Processor()))
    j = vqa.VQAJudge(vqa.VQAJudge.Params())
    free, mc = j.choose(np.zeros((1, 8, 8, 3), np.uint8), ["What animal is this?"], [["cat", "dog"]])
    assert seen == ["Answer the multiple-choice question. Question: What animal is this? Choices: cat, dog Answer:"]
    seen.clear()
    j.answer(np.zeros((1, 8, 8, 3), np.uint8), ["What animal is this?"])
    assert seen == ["Answer the question. Question: What animal is this? Answer:"]
