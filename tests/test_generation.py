import numpy as np
import pytest

from evallearn.generation import Generator, GenRequest, dedupe, plan_batches


def test_requests_hash_by_value_and_dedupe():
    a = GenRequest("a cat", 1, steps=4)
    assert a == GenRequest("a cat", 1, steps=4) and a.key == GenRequest("a cat", 1, steps=4).key
    assert a.key != GenRequest("a cat", 2, steps=4).key
    assert dedupe([a, GenRequest("a dog", 1), a]) == [a, GenRequest("a dog", 1)]


def test_batches_share_settings_and_keep_order():
    reqs = [GenRequest(f"p{i}", i, steps=4 if i % 2 else 8) for i in range(7)] + [GenRequest("p1", 1, steps=4)]
    batches = plan_batches(reqs, batch_size=2)
    assert [[r.prompt for r in b] for b in batches] == [["p0", "p2"], ["p4", "p6"], ["p1", "p3"], ["p5"]]
    assert all(len({r.settings for r in b}) == 1 for b in batches)


def test_runner_dedupes_requests_across_metrics(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    from evallearn.config import parse_config
    from evallearn.runner import prepare

    m = {"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir), "images_per_prompt": 2}}
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                        "metrics": [m, {**m, "id": "clip_again"}], "output_dir": str(tmp_path)})
    plan = prepare(cfg)
    assert sum(len(v) for v in plan.ctx.extras["requests_by_metric"].values()) == 4
    assert len(plan.requests) == 2


@pytest.fixture(scope="module")
def engine(tiny_pipe_dir):
    from evallearn.models.loading import load_pipeline, resolve_model

    return Generator(load_pipeline(resolve_model(str(tiny_pipe_dir))))


def test_same_request_same_image_alone_or_in_a_batch(engine):
    reqs = [GenRequest(p, s, steps=4, height=64, width=64) for p, s in [("a cat", 1), ("a dog", 2), ("a cat", 3)]]
    batch = engine.run_batch(reqs)
    for i, req in enumerate(reqs):
        alone = engine.run_batch([req])[0]
        # uint8 images: identical up to a rare last-bit rounding flip of batched float kernels
        assert np.abs(alone.astype(int) - batch[i].astype(int)).max() <= 1
        assert (alone == batch[i]).mean() > 0.999
    # position in the batch does not matter either
    rev = engine.run_batch(reqs[::-1])
    assert np.abs(rev[::-1].astype(int) - batch.astype(int)).max() <= 1
    # and different seeds give different images
    assert np.abs(batch[0].astype(int) - batch[2].astype(int)).mean() > 1


def test_generate_skips_what_is_stored(engine, tmp_path):
    from evallearn.store import ImageStore

    store = ImageStore(tmp_path)
    reqs = [GenRequest(f"p{i}", i, steps=2, height=64, width=64) for i in range(3)]
    assert engine.generate(reqs, lambda r: store.has(r.key), lambda r, im: store.put(r.key, im), 2) == 3
    assert engine.generate(reqs, lambda r: store.has(r.key), lambda r, im: store.put(r.key, im), 2) == 0
    assert store.get(reqs[0].key).shape == (64, 64, 3)


def test_eta_inf_gives_nonfinite_latents_flagged_per_request(engine):
    fine = [GenRequest("a cat", 1, steps=2, height=64, width=64), GenRequest("a dog", 2, steps=2, height=64, width=64)]
    images, faults = engine.sample(fine)
    assert faults == [None, None]
    broken = [GenRequest(r.prompt, r.seed, steps=2, height=64, width=64, eta=float("inf")) for r in fine]
    images, faults = engine.sample(broken)
    for fault in faults:  # DDIM's noise scale is inf: the latents are NaN after the first step
        assert fault["latents_nonfinite_from_step"] == 1 and fault["steps"] == 2
        assert fault["nonfinite_pixels"] == fault["pixels"] == 64 * 64 * 3
    assert images.dtype == np.uint8 and (images == 0).all()  # stored as 0, never as a colour


def test_one_nan_image_in_a_batch_is_flagged_alone(engine, tmp_path):
    from evallearn.store import ImageStore

    decoder = engine.pipe.vae.decoder
    # the VAE decodes the batch in order: make the second image's pixels NaN, the others untouched
    hook = decoder.register_forward_hook(lambda mod, args, out: out.index_fill(0, out.new_tensor([1]).long(),
                                                                              float("nan")))
    try:
        reqs = [GenRequest(f"p{i}", i, steps=2, height=64, width=64) for i in range(3)]
        store = ImageStore(tmp_path)
        written = engine.generate(reqs, lambda r: store.has(r.key), lambda r, im: store.put(r.key, im), 4,
                                  put_nonfinite=lambda r, im, f: store.put(r.key, im, nonfinite=f))
    finally:
        hook.remove()
    assert written == 3 and all(store.has(r.key) for r in reqs)  # stored: a rerun does not redo it
    assert store.flagged(reqs[0].key) is None and store.flagged(reqs[2].key) is None
    fault = store.flagged(reqs[1].key)
    assert fault["nonfinite_pixels"] == 64 * 64 * 3 and fault["latents_nonfinite_from_step"] is None
    # a finite image stored later under the same key clears the flag
    store.put(reqs[1].key, store.get(reqs[0].key))
    assert store.flagged(reqs[1].key) is None


def test_base_images_are_keyed_by_batch_size_not_by_metric_order(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    """Batched kernels may round a pixel differently at another batch size: base images made at
    batch size 1 and 4 must not share a folder (whichever run came first would decide the other's
    "before" images); two configs that differ only in the order of their metrics do share it."""
    from evallearn.config import parse_config
    from evallearn.runner import base_dir, prepare

    clip = {"clip_model": str(tiny_clip_dir), "images_per_prompt": 2}
    m1 = {"name": "clip_score", "id": "t", "params": {**clip, "prompt_set": "target"}}
    m2 = {"name": "clip_score", "id": "r", "params": {**clip, "prompt_set": "retain"}}

    def plan(batch, metrics):
        return prepare(parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "retain": ["dog"]},
                                     "metrics": metrics, "sampler": {"batch_size": batch, "steps": 2},
                                     "output_dir": str(tmp_path)}))

    assert base_dir(plan(1, [m1, m2])) != base_dir(plan(4, [m1, m2]))
    assert base_dir(plan(4, [m1, m2])) == base_dir(plan(4, [m2, m1]))


def test_padded_generation_computes_every_image_in_a_full_batch(engine, monkeypatch):
    """Base images are generated with ``pad``: the short last batch is filled up to the batch
    size, so an image never depends on how many other requests happened to share its run."""
    seen = []

    def fake_sample(batch):
        seen.append([r.prompt for r in batch])
        return np.zeros((len(batch), 2, 2, 3), np.uint8), [None] * len(batch)

    monkeypatch.setattr(engine, "sample", fake_sample)
    reqs = [GenRequest(f"p{i}", i, steps=2, height=64, width=64) for i in range(5)]
    put = []
    assert engine.generate(reqs, lambda r: False, lambda r, im: put.append(r.prompt), 4, pad=True) == 5
    assert put == [f"p{i}" for i in range(5)]
    assert [len(b) for b in seen] == [4, 4] and seen[1] == ["p4"] * 4
    seen.clear()
    engine.generate(reqs, lambda r: False, lambda r, im: None, 4)
    assert [len(b) for b in seen] == [4, 1]  # unpadded: the run's own images keep their partition


def test_a_padded_lone_request_equals_it_in_a_full_batch_of_others(engine):
    # at a fixed batch size a row's result does not depend on its neighbours
    reqs = [GenRequest(f"q{i}", 10 + i, steps=3, height=64, width=64) for i in range(4)]
    full = engine.run_batch([reqs[1], reqs[2], reqs[0], reqs[3]])[2]
    got = {}
    engine.generate([reqs[0]], lambda r: False, lambda r, im: got.setdefault(r.key, im), 4, pad=True)
    assert np.array_equal(got[reqs[0].key], full)
