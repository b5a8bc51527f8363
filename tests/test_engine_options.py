"""Engine options (``engine:``): each option's effect on images, exact undo, hashing, auto batch.

Images are compared in uint8 grey levels against the default engine on the tiny random
pipeline. The tolerances asserted here are the ones docs/performance.md states.
"""

import os

import numpy as np
import pytest
import torch

from evallearn.config import parse_config, short_hash, spec_dict, spec_hash
from evallearn.engine import EngineConfig, applied, base_key, batch_from_memory, image_spec
from evallearn.errors import UserError
from evallearn.generation import Generator, GenRequest

REQS = [GenRequest(f"a photo of object {i}", seed=i, steps=3, guidance_scale=6.0, height=64, width=64)
        for i in range(2)]


def _images(pipe, engine, reqs=REQS):
    out = {}
    with applied(pipe, engine, "cpu", reqs, 16) as state:
        Generator(pipe).generate(reqs, have=lambda r: False, put=lambda r, im: out.__setitem__(r.key, im),
                                 batch_size=state.batch_size)
    return np.stack([out[r.key] for r in reqs]).astype(np.int16), state


@pytest.fixture(scope="module")
def reference(pipe):
    return _images(pipe, None)[0]


def _snapshot(pipe):
    return {name: [(t, t.data_ptr(), t.dtype, t.data.clone()) for t in list(m.parameters()) + list(m.buffers())]
            for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _assert_restored(pipe, snap, procs):
    for name, items in snap.items():
        for t, ptr, dtype, copy in items:  # the very same storage, dtype and values
            assert t.data_ptr() == ptr and t.dtype == dtype and torch.equal(t.data, copy), name
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
    assert "decode" not in pipe.vae.__dict__
    assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in pipe.unet.modules())
    assert pipe.unet._compiled_call_impl is None


# -- options that keep images: tolerance 1 grey level, on at most 1 % of the values ----------


@pytest.mark.parametrize("option", [{"attention": "math"}, {"channels_last": True}, {"fuse_qkv": True}])
def test_kernel_options_keep_images_within_one_level(pipe, reference, option):
    images, _ = _images(pipe, EngineConfig(**option))
    diff = np.abs(images - reference)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01


def test_options_are_really_applied_inside_the_block(pipe):
    seen = {}

    def spy(module, args, kwargs):
        seen["unet_dtype"] = module.dtype
        seen["procs"] = {type(p).__name__ for p in module.attn_processors.values()}
        seen["channels_last"] = module.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    def vae_spy(module, args, kwargs):
        seen["vae_dtype"] = (args[0].dtype, module.conv_in.weight.dtype)

    h1 = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    h2 = pipe.vae.decoder.register_forward_pre_hook(vae_spy, with_kwargs=True)
    try:
        _images(pipe, EngineConfig(precision="bf16", channels_last=True, fuse_qkv=True), REQS[:1])
    finally:
        h1.remove()
        h2.remove()
    assert seen == {"unet_dtype": torch.bfloat16, "procs": {"FusedAttnProcessor2_0"}, "channels_last": True,
                    "vae_dtype": (torch.float32, torch.float32)}
    seen.clear()
    h1 = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        _images(pipe, EngineConfig(attention="math"), REQS[:1])
    finally:
        h1.remove()
    assert seen["procs"] == {"AttnProcessor"} and seen["unet_dtype"] == torch.float32


def test_every_option_is_undone_exactly(pipe, reference):
    snap = _snapshot(pipe)
    procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    for engine in (EngineConfig(precision="bf16", channels_last=True, fuse_qkv=True),
                   EngineConfig(precision="fp16", vae_precision="same", attention="math")):
        _images(pipe, engine, REQS[:1])
        _assert_restored(pipe, snap, procs)
    with pytest.raises(RuntimeError, match="boom"), applied(pipe, EngineConfig(precision="bf16", fuse_qkv=True)):
        raise RuntimeError("boom")
    _assert_restored(pipe, snap, procs)
    assert np.array_equal(_images(pipe, None)[0], reference)  # bit for bit after all that


# -- precision: changes images, so it is hashed; the VAE decodes in fp32 ---------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_stays_close_and_fp32_vae_is_closer(pipe, reference, precision):
    half, _ = _images(pipe, EngineConfig(precision=precision))
    diff = np.abs(half - reference)
    assert 0 < diff.mean() <= 1.5 and diff.max() <= 12
    if precision == "bf16":  # bf16 has 8 mantissa bits: decoding in bf16 too moves pixels further
        same, _ = _images(pipe, EngineConfig(precision=precision, vae_precision="same"))
        assert np.abs(same - reference).mean() > diff.mean()


def _cfg(tmp_path, **engine):
    return parse_config({"model": "tiny-random", "concept": {"name": "cat"}, "output_dir": str(tmp_path),
                         **({"engine": engine} if engine else {})})


def test_only_precision_enters_the_spec_hash(tmp_path):
    default = _cfg(tmp_path)
    data = default.model_dump(mode="json")
    data.pop("output_dir")
    data.pop("engine")
    # a config without an engine section hashes exactly as before the section existed
    assert spec_hash(default) == short_hash(data) and "engine" not in spec_dict(default)
    kernels = _cfg(tmp_path, attention="math", channels_last=True, compile=True, batch_size="auto")
    assert spec_hash(kernels) == spec_hash(default)
    assert spec_hash(_cfg(tmp_path, precision="fp32")) == spec_hash(default)  # fp32 is what is loaded
    bf16 = _cfg(tmp_path, precision="bf16")
    assert spec_dict(bf16)["engine"] == {"precision": "bf16", "vae_precision": "fp32"}
    assert spec_hash(bf16) != spec_hash(default)
    assert spec_hash(_cfg(tmp_path, precision="bf16", vae_precision="same")) not in (spec_hash(bf16),
                                                                                      spec_hash(default))


def test_image_and_base_keys():
    class C:  # a config loaded in fp16
        dtype = "float16"
        engine = EngineConfig(precision="fp16", vae_precision="same")

    assert image_spec(C) == {}  # the model is already fp16 throughout
    C.engine = EngineConfig(precision="fp16")
    assert image_spec(C) == {"precision": "fp16", "vae_precision": "fp32"}
    C.engine = EngineConfig()
    assert base_key(C) == {}
    C.engine = EngineConfig(compile=True, max_auto_batch=8)
    assert base_key(C) == {"engine": {"compile": True}}  # the cap matters only to batch_size auto
    C.engine = EngineConfig(batch_size="auto", max_auto_batch=8)
    assert base_key(C) == {"engine": {"batch_size": "auto", "max_auto_batch": 8}}


def test_base_image_folder_depends_on_engine(tmp_path):
    from evallearn.runner import base_dir, prepare

    dirs = {name: base_dir(prepare(_cfg(tmp_path, **e))) for name, e in
            {"default": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": True}}.items()}
    assert len(set(dirs.values())) == 3


@pytest.mark.parametrize("engine, message", [
    ({"fuse_qkv": True, "attention": "math"}, "fuse_qkv needs attention: sdpa"),
    ({"batch_size": 0}, "batch_size"),
    ({"precision": "fp8"}, "engine.precision"),
    ({"cuda_graphs": True}, "unknown key 'engine.cuda_graphs'"),
])
def test_bad_engine_settings_are_one_line_errors(tmp_path, engine, message):
    with pytest.raises(UserError, match=message):
        _cfg(tmp_path, **engine)


# -- batch size ------------------------------------------------------------------------------


def test_batch_from_memory_hand_values():
    gib = 2**30
    assert batch_from_memory(10 * gib, gib, cap=64) == 8  # 0.8 * 10 GiB / 1 GiB
    assert batch_from_memory(10 * gib, gib, cap=4) == 4
    assert batch_from_memory(gib, 3 * gib, cap=64) == 1  # never below one
    assert batch_from_memory(100 * gib, 3 * gib, cap=64, fraction=0.5) == 16


def test_auto_batch_on_cpu_falls_back_to_the_sampler_batch(pipe):
    with applied(pipe, EngineConfig(batch_size="auto"), "cpu", REQS, 5) as state:
        assert state.batch_size == 5 and "sampler.batch_size (5)" in state.notes[0]
    with applied(pipe, EngineConfig(batch_size=3), "cpu", REQS, 5) as state:
        assert state.batch_size == 3


def test_defaults_touch_nothing_and_other_pipelines_are_refused_by_name():
    class Wrapper:  # a technique's pipeline-like object that is not a diffusers pipeline
        def __call__(self, **kwargs):
            raise AssertionError("not called")

    with applied(Wrapper(), EngineConfig(batch_size=4), "cpu", REQS, 16) as state:
        assert state.batch_size == 4 and state.timings == {}
    with pytest.raises(UserError, match="engine: .*Wrapper has no unet, vae, components"):
        with applied(Wrapper(), EngineConfig(channels_last=True), "cpu", REQS, 16):
            pass


def test_planned_shapes_for_compile_warmup(pipe):
    from evallearn.engine import _shapes

    reqs = [GenRequest(f"p{i}", i, steps=3, height=64, width=64) for i in range(5)]
    # tiny pipeline: VAE factor 2; CFG doubles the rows; batches of 2, 2, 1
    assert [s[:3] for s in _shapes(pipe, reqs, 2)] == [(4, 32, 32), (2, 32, 32)]
    no_cfg = [GenRequest("p", 0, steps=3, guidance_scale=1.0, height=32, width=32)]
    assert [s[:3] for s in _shapes(pipe, no_cfg, 2)] == [(1, 16, 16)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_batch_on_cuda_fits_free_memory(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_pipe_dir)), "cuda")
    from evallearn.engine import probe_per_image_bytes

    per_image = probe_per_image_bytes(pipe, REQS[0], "cuda")
    assert per_image > 0
    with applied(pipe, EngineConfig(batch_size="auto", max_auto_batch=1000), "cuda", REQS, 16) as state:
        assert 1 <= state.batch_size <= 1000 and "batch_size=auto" in state.notes[0]
        # the chosen batch runs without running out of memory
        many = [GenRequest("p", i, steps=2, height=64, width=64) for i in range(min(state.batch_size, 64))]
        assert Generator(pipe, "cuda").run_batch(many).shape[0] == len(many)


# -- compile: slow on CPU (about two minutes for the tiny UNet on one thread) ----------------


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EVALLEARN_COMPILE_TEST"), reason="set EVALLEARN_COMPILE_TEST=1 (~2 min)")
def test_compile_keeps_images_and_reports_its_cost(pipe, reference):
    snap = _snapshot(pipe)
    procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    images, state = _images(pipe, EngineConfig(compile=True))
    diff = np.abs(images - reference)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
    assert state.timings["engine_compile"] > 0
    _assert_restored(pipe, snap, procs)


# -- a whole run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_run_with_engine_options_reports_them(tiny_pipe_dir, tiny_clip_dir, tmp_path, plugin_path):
    from evallearn.runner import run

    metric = {"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir), "images_per_prompt": 2}}
    base = {"model": str(tiny_pipe_dir), "technique": {"name": "scale_attention", "params": {"factor": 0.25}},
            "concept": {"name": "cat", "retain": ["dog"]}, "metrics": [metric], "sampler": {"steps": 2},
            "output_dir": str(tmp_path)}
    plain = run(parse_config(base))
    fast = run(parse_config({**base, "engine": {"precision": "bf16", "channels_last": True, "fuse_qkv": True,
                                                "batch_size": 3}}))
    assert fast["run"]["dir"] != plain["run"]["dir"]
    eng = fast["timings"]["engine"]
    assert eng["batch_sizes"] == [3, 3] and "engine_apply" in eng["seconds"]
    assert "engine" not in plain["timings"] or plain["timings"]["engine"]["batch_sizes"] == [16, 16]
    # kernels only: same run directory, nothing regenerated after the technique
    again = run(parse_config({**base, "engine": {"channels_last": True}}))
    assert again["run"]["dir"] == plain["run"]["dir"]
    assert again["metrics"]["clip_score"]["after"]["value"] == plain["metrics"]["clip_score"]["after"]["value"]
