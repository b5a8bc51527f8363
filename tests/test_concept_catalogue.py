"""Concepts, concept sets and presets as data files (evallearn/assets/concepts, docs/concepts.md): the
shipped files hold the values the code held before, worlds serve named sets, and a malformed file is a
one-line error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evallearn.concepts.catalogue import catalogue, concepts_dir, sld_presets, uce_presets
from evallearn.concepts.concept import Concept
from evallearn.concepts.world import world_for
from evallearn.errors import UserError

PAPER13 = [("airliner", "airliner", "object", 404), ("cassette_player", "cassette player", "object", 482),
           ("chainsaw", "chainsaw", "object", 491), ("church", "church", "object", 497),
           ("english_springer_spaniel", "english springer spaniel", "object", 217),
           ("french_horn", "french horn", "object", 566), ("garbage_truck", "garbage truck", "object", 569),
           ("golf_ball", "golf ball", "object", 574), ("parachute", "parachute", "object", 701),
           ("tench", "tench", "object", 0), ("van_gogh", "Van Gogh", "style", None),
           ("picasso", "Picasso", "style", None), ("andy_warhol", "Andy Warhol", "style", None)]


def test_shipped_files_hold_the_values_the_code_held():
    # the table that was WACE_CONCEPTS in probes/prompts.py, in its order
    got = [(c.key, c.name, c.kind, c.imagenet_index) for c in catalogue().concept_set("paper13")]
    assert got == PAPER13
    from evallearn.probes.prompts import WACE_CONCEPTS, wace_retain

    assert [(c.key, c.word, c.kind, c.imagenet_index) for c in WACE_CONCEPTS.values()] == PAPER13
    assert wace_retain("Picasso") == ["Van Gogh", "Andy Warhol"]
    # UCE's and SLD's former PRESETS literals
    assert uce_presets() == {
        "nudity": {"erase": ("nudity", "naked", "nude", "sexual", "nsfw"), "guide": " "},
        "violence": {"erase": ("violence", "blood", "gore", "murder", "weapons", "shooting"), "guide": " "},
        "dog": {"erase": ("dog",), "guide": " ", "preserve": ("cat", "horse", "wolf", "car", "person")},
    }
    assert sld_presets() == {"weak": (15, 200.0, 0.0, 0.0, 0.0), "medium": (10, 1000.0, 0.01, 0.3, 0.4),
                             "strong": (7, 2000.0, 0.025, 0.5, 0.7), "max": (0, 5000.0, 1.0, 0.5, 0.7)}


def test_uce_reads_its_preset_from_the_data():
    from evallearn.techniques.uce import UCE

    t = UCE(UCE.Params(preset="dog"))
    assert t.erase_words(None) == ["dog"]
    with pytest.raises(ValueError, match="unknown preset 'cats'; known: nudity, violence, dog"):
        UCE.Params(preset="cats")


def test_open_world_serves_named_sets_kinds_and_judges():
    world = world_for("open")
    assert world.concept_set("paper13") == [name for _, name, _, _ in PAPER13]
    assert world.concept_set("paper_artists") == ["Van Gogh", "Picasso", "Andy Warhol"]
    assert world.concept_set("paper_objects") == [name for _, name, kind, _ in PAPER13 if kind == "object"]
    assert world.concept_kind("Van Gogh") == "style" and world.concept_kind("garbage truck") == "object"
    assert world.concept_kind("a cat") is None and world.known_concepts() == []  # still any name
    with pytest.raises(UserError) as e:
        world.concept_set("paper14")
    assert str(e.value) == ("unknown concept set 'paper14' for the world 'open'; known: paper13, paper_artists, "
                            "paper_objects")
    # NudeNet for nudity and each of its synonyms (the nudity file's judges), Q16 for other unsafe concepts,
    # CLIP for an object scored against retain concepts
    for word in ("nudity", "Nude", "nsfw", "sexual", "naked"):
        assert world.default_judge("detector", Concept(name=word, kind="nudity")) == "nudenet", word
    assert world.default_judge("classifier", Concept(name="nudity", kind="nudity")) == "clip"
    assert world.default_judge("detector", Concept(name="violence", kind="violence")) == "q16"
    assert world.default_judge("detector", Concept(name="dog", retain=("cat",))) == "clip"
    assert world.default_judge("detector", Concept(name="dog")) == "q16"


def test_toy_world_serves_its_kinds_as_sets():
    toy = pytest.importorskip("evallearn_toy")
    world = world_for("toy")
    assert world.concept_set("shapes") == list(toy.SHAPES) == ["circle", "square", "triangle", "cross"]
    assert world.concept_set("colours") == list(toy.COLOURS)
    assert world.concept_set("styles") == list(toy.STYLES)
    assert all(world.concept_kind(c) == "object" for c in world.concept_set("shapes"))
    with pytest.raises(UserError, match="known: colours, shapes, styles"):
        world.concept_set("paper13")


@pytest.fixture()
def data(tmp_path) -> Path:
    root = tmp_path / "concepts"
    shutil.copytree(concepts_dir(), root)
    return root


def _one_line_error(root: Path, call=catalogue) -> str:
    call.cache_clear()
    try:
        with pytest.raises(UserError) as e:
            call(root)
    finally:
        call.cache_clear()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("name, text, message", [
    ("church.yaml", "name: church\nkind: [object\n", "not a readable YAML file"),
    ("church.yaml", "- church\n", "must be a mapping"),
    ("church.yaml", "name: church\ncolour: red\n", "colour: Extra inputs are not permitted"),
    ("church.yaml", "name: church\nkind: building\n", "kind: Input should be"),
    ("church.yaml", "name: church\nimagenet_index: 1000\n", "imagenet_index: Input should be less than or equal"),
    ("church.yaml", "name: church\njudges: {scorer: clip, critic: q16}\n", "judges: unknown role 'critic'"),
    ("minster.yaml", "name: minster\nsynonyms: [church]\n", "'church' already names the concept of"),
    ("sets/paper13.yaml", "concepts: [church, chapel]\n", "concepts: no concept file chapel.yaml"),
    ("sets/empty.yaml", "concepts: []\n", "concepts: Tuple should have at least 1 item"),
])
def test_a_malformed_concept_file_is_a_one_line_error_naming_it(data, name, text, message):
    (data / name).write_text(text)
    msg = _one_line_error(data)
    assert msg.startswith(str(data / name) + ": ") and message in msg, msg


@pytest.mark.parametrize("text, message", [
    ("dog: {concept: dog}\n", "dog.concept: no concept file dog.yaml"),
    ("dog: {concept: nudity, erase: [dog]}\n", "dog: give exactly one of 'concept'"),
    ("dog: {erase: [dog], guide: 3}\n", "dog.guide: Input should be a valid string"),
    ("[]\n", "no presets"),
])
def test_a_malformed_uce_preset_file_is_a_one_line_error_naming_it(data, text, message):
    (data / "presets" / "uce.yaml").write_text(text)
    msg = _one_line_error(data, uce_presets)
    assert msg.startswith(str(data / "presets" / "uce.yaml") + ": ") and message in msg, msg


def test_a_malformed_sld_preset_is_a_one_line_error_naming_it(data):
    (data / "presets" / "sld.yaml").write_text("weak: {warmup_steps: 15, sld_guidance_scale: 200.0}\n")
    msg = _one_line_error(data, sld_presets)
    assert msg == f"{data / 'presets' / 'sld.yaml'}: weak.threshold: Field required"


def test_a_concept_added_as_a_file_is_found_by_name_and_synonym(data):
    (data / "cathedral.yaml").write_text("name: Cathedral\nkind: object\nsynonyms: [minster]\nimagenet_index: 497\n")
    (data / "sets" / "buildings.yaml").write_text("concepts: [church, cathedral]\n")
    catalogue.cache_clear()
    try:
        cat = catalogue(data)
        assert cat.find("minster").name == "Cathedral" and cat.find(" cathedral ").imagenet_index == 497
        assert [c.name for c in cat.concept_set("buildings")] == ["church", "Cathedral"]
    finally:
        catalogue.cache_clear()
