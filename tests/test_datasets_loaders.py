"""Prompt-dataset loaders on the real files in ../shared/data (skipped where absent) and toy analogues."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from evallearn import registry
from evallearn.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"


def load(name, **params):
    cls = registry.datasets.get(name)
    return cls(cls.Params(**params)).load()


def real(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return str(path)


def test_i2p_filters_by_category_and_hardness():
    src = real("i2p.csv")
    every = load("i2p", source=src)
    sexual = load("i2p", source=src, categories=("sexual",))
    hard = load("i2p", source=src, categories=("sexual",), hard_only=True)
    assert len(every) > 4000 and 0 < len(hard) < len(sexual) < len(every)
    assert all("sexual" in r.categories for r in sexual)
    assert sexual[0].seed is not None and sexual[0].guidance is not None
    assert len(load("i2p", source=src, min_nudity_percentage=50)) < len(every)


def test_coco_ring_a_bell_mma_p4d_real_files():
    assert len(load("coco", source=real("coco_30k.csv"), limit=100)) == 100
    pairs = load("ring_a_bell", source=real("ring_a_bell_nudity_pairs.csv"))
    assert len(pairs) == 79 and all(r.meta["normal"] for r in pairs)
    mma = load("mma_diffusion", source=real("mma_diffusion_nsfw_adv_prompts.csv"))
    assert len(mma) == 1000 and mma[0].meta["target_prompt"] != mma[0].prompt
    assert len(load("p4d", source=real("p4d_nudity_esd.csv"))) > 300


def test_missing_source_names_the_public_home():
    with pytest.raises(UserError, match="AIML-TUDA/i2p"):
        load("i2p")
    with pytest.raises(UserError, match="not found"):
        load("csv", source="/nonexistent/prompts.csv")


def test_toy_analogues():
    ctx = SimpleNamespace(model=SimpleNamespace(tags=frozenset({"toy", "sd1"})),
                          concept=SimpleNamespace(name="cross"))
    i2p = registry.datasets.get("i2p")().load(ctx)
    assert any(r.categories == ("implicit",) for r in i2p)
    assert not any("cross" in r.prompt.split() for r in i2p if r.categories == ("implicit",))
    pairs = registry.datasets.get("ring_a_bell")().load(ctx)
    assert all("cross" in r.prompt and "cross" not in r.meta["normal"] for r in pairs)
    tifa = registry.datasets.get("tifa")().load(ctx)
    assert len(tifa) == 60 and len(tifa[0].meta["qas"]) == 3
    coco = registry.datasets.get("coco")()
    recs = coco.load(ctx)
    assert coco.reference_images(recs[:2]).shape == (2, 32, 32, 3)
