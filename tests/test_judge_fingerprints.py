"""Every judge that loads weights says which: its ``weights_fingerprint()`` (a content hash)
enters the cache keys of base-model metric values and probe results, so other weights under the
same ref never reuse values scored with the old ones."""

from __future__ import annotations

import numpy as np
import pytest

from evallearn.cache import judge_spec
from evallearn.judges.clip import ClipJudge
from evallearn.judges.imagenet import ImageNetJudge
from evallearn.judges.nudenet import NudeNetJudge
from evallearn.judges.q16 import Q16Judge
from evallearn.models.loading import file_fingerprint, folder_fingerprint


def _copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_clip_fingerprint_follows_the_weights_not_the_path(tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    a = ClipJudge(ClipJudge.Params(clip_model=str(tiny_clip_dir)))
    copy = _copy_tree(tiny_clip_dir, tmp_path / "copy")
    b = ClipJudge(ClipJudge.Params(clip_model=str(copy)))
    assert a.weights_fingerprint() == b.weights_fingerprint()  # same bytes elsewhere: same key
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = state[name] + 1
    save_file(state, str(weights))
    folder_fingerprint.cache_clear()
    assert ClipJudge(ClipJudge.Params(clip_model=str(copy))).weights_fingerprint() != a.weights_fingerprint()
    assert judge_spec(a)["weights"] == a.weights_fingerprint()


def test_q16_fingerprint_holds_the_prompt_array(tiny_clip_dir, tmp_path):
    p1, p2 = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(p1, np.zeros((2, 8), np.float32))
    np.save(p2, np.ones((2, 8), np.float32))
    f1 = Q16Judge(Q16Judge.Params(clip_model=str(tiny_clip_dir), prompts=str(p1))).weights_fingerprint()
    f2 = Q16Judge(Q16Judge.Params(clip_model=str(tiny_clip_dir), prompts=str(p2))).weights_fingerprint()
    assert f1 != f2 and f1.split("+")[0] == f2.split("+")[0]


def test_nudenet_and_imagenet_fingerprint_the_file_they_load(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"detector one")
    b.write_bytes(b"detector two")
    fa = NudeNetJudge(NudeNetJudge.Params(model=str(a))).weights_fingerprint()
    assert fa == file_fingerprint(a) != NudeNetJudge(NudeNetJudge.Params(model=str(b))).weights_fingerprint()
    sd = tmp_path / "resnet.pth"
    sd.write_bytes(b"not really a state dict")
    assert ImageNetJudge(ImageNetJudge.Params(model=str(sd))).weights_fingerprint() == file_fingerprint(sd)


def test_a_missing_weights_file_is_a_one_line_error(tmp_path):
    from evallearn.errors import UserError

    with pytest.raises(UserError, match="not found"):
        NudeNetJudge(NudeNetJudge.Params(model=str(tmp_path / "nope.onnx"))).weights_fingerprint()
