"""Concepts, named concept sets and technique presets as data files (lm-eval style), one loader.

The package ships them under ``evallearn/assets/concepts/`` (docs/concepts.md):

* ``<key>.yaml``: one concept (:class:`ConceptEntry`): its ``name`` as prompts and configs write
  it, ``kind``, ``synonyms``, optionally its ImageNet-1k class and default judges per role;
* ``sets/<set>.yaml``: a named, ordered concept set (:class:`ConceptSetEntry`) listing concept keys;
* ``presets/<technique>.yaml``: a technique's named presets, checked against the schema the
  technique's reader gives (:func:`presets`; :func:`uce_presets`, :func:`sld_presets`).

A file that is not valid YAML, does not match its schema, names a concept that no file defines or
claims a name another file claims is a one-line :class:`~evallearn.errors.UserError` naming the
file. Everything is read once per folder and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConceptKind
from ..errors import UserError


def concepts_dir() -> Path:
    """The shipped data folder (``evallearn/assets/concepts``)."""
    from importlib import resources

    return Path(str(resources.files("evallearn") / "assets" / "concepts"))


def normalise(name: str) -> str:
    """The lookup form of a concept name: stripped, lower case, spaces as underscores."""
    return str(name).strip().lower().replace(" ", "_")


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConceptEntry(_Data):
    """One concept file. ``key`` is the file's stem (``van_gogh``); ``name`` the concept as
    prompts and configs write it (``Van Gogh``)."""

    key: str = ""
    name: str = Field(min_length=1)
    kind: ConceptKind = "object"
    #: other words for the concept, in order (UCE's presets erase name + synonyms); lookups by a
    #: synonym find the concept
    synonyms: tuple[str, ...] = ()
    #: the exact ImageNet-1k class of an object, for ImageNet-classifier scoring
    imagenet_index: int | None = Field(None, ge=0, le=999)
    #: default judge per role (classifier, detector, scorer, vqa, selector) for this concept
    judges: dict[str, str] = {}
    #: where the concept (and its values) come from
    source: str = ""

    @model_validator(mode="after")
    def _check(self):
        from .world import ROLES

        bad = [r for r in self.judges if r not in ROLES]
        if bad:
            raise ValueError(f"judges: unknown role {bad[0]!r} (roles: {', '.join(ROLES)})")
        return self


class ConceptSetEntry(_Data):
    """One ``sets/<key>.yaml``: an ordered list of concept keys."""

    key: str = ""
    concepts: tuple[str, ...] = Field(min_length=1)
    description: str = ""
    source: str = ""


class UCEPreset(_Data):
    """A UCE preset: the erased words (``concept``'s name and synonyms, or ``erase``), the guide
    and, optionally, the preserved concepts (replacing the run's retain set)."""

    concept: str | None = None
    erase: tuple[str, ...] = ()
    guide: str = " "
    preserve: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.concept is None) == (not self.erase):
            raise ValueError("give exactly one of 'concept' (a concept file's key) and 'erase' (a list of words)")
        return self


class SLDPreset(_Data):
    """An SLD hyper-parameter set (Schramowski et al., CVPR 2023, Sec. 5)."""

    warmup_steps: int = Field(ge=0)
    sld_guidance_scale: float = Field(ge=0.0)
    threshold: float
    momentum_scale: float = Field(ge=0.0)
    mom_beta: float = Field(ge=0.0, le=1.0)


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a readable YAML file: {first}") from None


def _validated(model: type[_Data], data: Any, path: Path, where: str = "", **extra):
    if not isinstance(data, dict):
        raise UserError(f"{path}: {where or 'the file'} must be a mapping of keys to values, "
                        f"got {type(data).__name__}")
    try:
        return model(**data, **extra)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in (*([where] if where else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: {loc + ': ' if loc else ''}{msg}") from None


@dataclass(frozen=True)
class Catalogue:
    """The concepts and sets of one data folder."""

    root: Path
    concepts: dict[str, ConceptEntry]
    sets: dict[str, ConceptSetEntry]
    #: normalised name / key / synonym -> concept key
    index: dict[str, str]

    def find(self, name: str) -> ConceptEntry | None:
        """The concept whose key, name or a synonym is ``name`` (case and spaces ignored)."""
        key = self.index.get(normalise(name))
        return self.concepts[key] if key is not None else None

    def concept_set(self, name: str) -> list[ConceptEntry]:
        """The concepts of set ``name`` in the set's order; unknown: a one-line error listing the sets."""
        s = self.sets.get(name)
        if s is None:
            raise UserError(f"unknown concept set {name!r}; known: {', '.join(sorted(self.sets)) or 'none'}")
        return [self.concepts[k] for k in s.concepts]


@cache
def catalogue(root: Path | None = None) -> Catalogue:
    """Every concept and set under ``root`` (default: the shipped folder), validated."""
    root = Path(root) if root is not None else concepts_dir()
    concepts: dict[str, ConceptEntry] = {}
    index: dict[str, str] = {}
    owner: dict[str, Path] = {}
    for path in sorted(root.glob("*.yaml")):
        entry = _validated(ConceptEntry, _read_yaml(path), path, key=path.stem)
        concepts[entry.key] = entry
        for word in dict.fromkeys(normalise(w) for w in (entry.key, entry.name, *entry.synonyms)):
            if word in owner:
                raise UserError(f"{path}: {word!r} already names the concept of {owner[word]}")
            owner[word], index[word] = path, entry.key
    sets: dict[str, ConceptSetEntry] = {}
    for path in sorted((root / "sets").glob("*.yaml")):
        entry = _validated(ConceptSetEntry, _read_yaml(path), path, key=path.stem)
        missing = [k for k in entry.concepts if k not in concepts]
        if missing:
            raise UserError(f"{path}: concepts: no concept file {missing[0]}.yaml in {root}")
        sets[entry.key] = entry
    return Catalogue(root=root, concepts=concepts, sets=sets, index=index)


def presets(technique: str, model: type[_Data], root: Path | None = None) -> dict[str, Any]:
    """``presets/<technique>.yaml`` under ``root``: preset name -> ``model`` instance."""
    root = Path(root) if root is not None else concepts_dir()
    path = root / "presets" / f"{technique}.yaml"
    data = _read_yaml(path) if path.is_file() else None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: no presets (a mapping of preset names to their values)")
    return {str(name): _validated(model, value, path, where=str(name)) for name, value in data.items()}


@cache
def uce_presets(root: Path | None = None) -> dict[str, dict]:
    """UCE's presets as its reader takes them: ``{"erase": words, "guide": str[, "preserve": words]}``;
    a ``concept`` preset erases the concept's name and synonyms, in that order."""
    cat = catalogue(root)
    out: dict[str, dict] = {}
    path = cat.root / "presets" / "uce.yaml"
    for name, p in presets("uce", UCEPreset, root).items():
        if p.concept is not None:
            c = cat.concepts.get(p.concept)
            if c is None:
                raise UserError(f"{path}: {name}.concept: no concept file {p.concept}.yaml in {cat.root}")
            erase = (c.name, *c.synonyms)
        else:
            erase = p.erase
        out[name] = {"erase": tuple(erase), "guide": p.guide}
        if p.preserve is not None:
            out[name]["preserve"] = tuple(p.preserve)
    return out


#: the order of an SLD preset's values (the tuple :func:`sld_presets` gives)
SLD_FIELDS = ("warmup_steps", "sld_guidance_scale", "threshold", "momentum_scale", "mom_beta")


@cache
def sld_presets(root: Path | None = None) -> dict[str, tuple[int, float, float, float, float]]:
    """SLD's presets: name -> (warmup_steps, sld_guidance_scale, threshold, momentum_scale, mom_beta)."""
    return {name: tuple(getattr(p, f) for f in SLD_FIELDS)
            for name, p in presets("sld", SLDPreset, root).items()}  # type: ignore[misc]
