"""A suite file: models × techniques (with small grids of their params) × concepts × seeds, with
the metrics, probes and sampler every cell shares; and its expansion into cells.

::

    name: toy-bench
    model: toy                        # or models: [a, b]
    techniques:
      - uce                           # shorthand for {name: uce}
      - {name: sld, params: {preset: max}}
      - {name: rece, id: rece-fast, params: {epochs: 1}, grid: {regular_scale: [1.0e-3, 1.0e-2]}}
    concepts: {set: world, kind: object}    # or {set: paper}, or a list of names / mappings
    seeds: [0]
    metrics: [ua, ira]
    sampler: {steps: 20}
    output_dir: runs/toy-bench

``grid`` maps a parameter to a list of values; a technique entry expands to the product of its
grid (its ``params`` are the same for every point). Concept sets are asked of the model's world,
never written here: ``{set: world}`` is every concept the world defines (optionally one ``kind``:
the toy world's shapes are ``{set: world, kind: object}``), ``{set: paper}`` the 13 concepts of
Lu et al. (2025), "When Are Concepts Erased From Diffusion Models?" (ten ImageNet objects and
three artists, each with the paper's other concepts of its kind as its retain set; ``kind``:
``object`` or ``style`` keeps one half), for an open-vocabulary model only. A bare name in a list
must be a concept the model's world defines, or on an open-vocabulary model one of the paper's
13; anything else is a mapping (``{name, kind, synonyms, retain}``, as a run config's
``concept``).

Every cell is an ordinary :class:`~evallearn.config.RunConfig` named after the cell
(``<model>-<technique id>[-<param>=<value>...]-<concept>-s<seed>``) and written into the
suite's ``output_dir``, so its run directory is the one ``eval-learn run`` of that config
makes. :func:`expand` checks every cell with :func:`evallearn.runner.prepare` (no weights).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import (
    MAX_SEED,
    ComponentRef,
    ConceptConfig,
    ConceptKind,
    EngineConfig,
    RunConfig,
    SamplerConfig,
    _plain,
    apply_overrides,
    check_id,
    read_mapping,
    spec_dict,
    validation_message,
)
from ..errors import UserError
from ..hashing import short_hash
from .cells import Cell

#: the most cells one suite may expand to (a typo in a grid should not queue a month of work)
MAX_CELLS = 2000
#: named concept sets (``concepts: {set: ...}``)
CONCEPT_SETS = ("world", "paper")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TechniqueEntry(_Strict):
    """A technique of the suite: ``params`` fixed, ``grid`` param -> list of values (product)."""

    name: str
    #: the label in cell ids (default: ``name``); lets one technique appear with two settings
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, tuple[Any, ...]] = Field(default_factory=dict)

    @field_validator("name", "id")
    @classmethod
    def _plain_id(cls, value: str | None) -> str | None:
        return value if value is None else check_id(value)

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, values in value.items():
                if not isinstance(values, list | tuple) or not values:
                    raise ValueError(f"'{key}' must map to a non-empty list of values")
        return value

    @model_validator(mode="after")
    def _grid_not_in_params(self) -> TechniqueEntry:
        both = sorted(set(self.grid) & set(self.params))
        if both:
            raise ValueError(f"{', '.join(both)} given both in params and in grid")
        return self

    @property
    def label(self) -> str:
        return self.id or self.name

    def points(self) -> list[dict[str, Any]]:
        """The grid's points (each a param -> value mapping), in the order the grid lists them."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.grid[k] for k in keys))]


class ConceptSet(_Strict):
    """A named set of concepts, asked of each model's world."""

    set: str
    kind: ConceptKind | None = None

    @field_validator("set")
    @classmethod
    def _known_set(cls, value: str) -> str:
        if value not in CONCEPT_SETS:
            raise ValueError(f"unknown concept set; known: {', '.join(CONCEPT_SETS)}")
        return value


class SuiteConfig(_Strict):
    """A benchmark suite (see the module docstring)."""

    name: str
    models: tuple[str, ...]
    techniques: tuple[TechniqueEntry, ...]
    concepts: ConceptSet | tuple[str | ConceptConfig, ...]
    seeds: tuple[int, ...] = (0,)
    metrics: tuple[ComponentRef, ...] = ()
    probes: tuple[ComponentRef, ...] = ()
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    sampler: SamplerConfig = SamplerConfig()
    engine: EngineConfig = EngineConfig()
    base_model: str | None = None
    base_metrics: bool = True
    #: the suite's folder: its run directories, ``_base/``, ``_techniques/`` and ``suite.json``
    #: (default ``runs/<name>``)
    output_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "model" in data and "models" not in data:  # ``model: toy`` is ``models: [toy]``
            data["models"] = [data.pop("model")]
        if isinstance(data.get("models"), str):
            data["models"] = [data["models"]]
        if isinstance(data.get("concepts"), str):  # ``concepts: paper`` is ``{set: paper}``
            data["concepts"] = {"set": data["concepts"]}
        if isinstance(data.get("seeds"), int):
            data["seeds"] = [data["seeds"]]
        for key in ("techniques", "metrics", "probes"):
            if isinstance(data.get(key), list | tuple):
                data[key] = [{"name": v} if isinstance(v, str) else v for v in data[key]]
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _plain(value)

    @field_validator("models", "techniques", "seeds")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("must list at least one")
        return value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        return RunConfig._device_form(value)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_form(cls, value: str | None) -> str | None:
        return value if value is None else RunConfig._output_dir_form(value)

    @property
    def folder(self) -> str:
        """Where the suite is written: ``output_dir``, else ``runs/<name>``."""
        return self.output_dir if self.output_dir is not None else str(Path("runs") / self.name)

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [s for s in value if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must be between 0 and {MAX_SEED} (got {bad[0]})")
        return value


def _check_concepts(value: Any, source: str) -> None:
    """``concepts`` is a set (a name or ``{set, kind}``) or a list of names and mappings; its
    errors name the entry (pydantic would report both arms of the union)."""
    try:
        if isinstance(value, dict):
            ConceptSet.model_validate(value)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    try:
                        ConceptConfig.model_validate(item)
                    except ValidationError as err:
                        raise UserError(validation_message(err, source, prefix=f"concepts[{i}]")) from None
                elif not isinstance(item, str):
                    raise UserError(f"{source}: invalid value for 'concepts[{i}]': a concept name or a mapping "
                                    "{name, kind, synonyms, retain}")
        elif value is not None and not isinstance(value, str):
            raise UserError(f"{source}: invalid value for 'concepts': a list of concepts or a set "
                            f"({{set: {' | '.join(CONCEPT_SETS)}, kind: ...}})")
    except ValidationError as err:
        raise UserError(validation_message(err, source, prefix="concepts")) from None


def parse_suite(data: dict[str, Any], source: str = "suite") -> SuiteConfig:
    if "model" in data and "models" in data:
        raise UserError(f"{source}: give either 'model' or 'models', not both")
    _check_concepts(data.get("concepts"), source)
    try:
        return SuiteConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(validation_message(err, source)) from None


def load_suite(path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """The suite in ``path`` (YAML or JSON) with ``--set KEY=VALUE`` overrides applied; bad input
    is a :class:`UserError` naming the file and the key."""
    suite = parse_suite(apply_overrides(read_mapping(path), overrides or []), str(path))
    return suite


# -- expansion ----------------------------------------------------------------------------------

_SLUG = re.compile(r"[^A-Za-z0-9_.+=-]+")


def slug(value: Any) -> str:
    """``value`` as a part of a cell id: letters, digits and ``_.+=-``; anything else is ``_``."""
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    text = _SLUG.sub("_", text).strip("_.") or "_"
    return text


def model_slug(ref: str) -> str:
    """A model ref as a cell-id part: its last path component (``CompVis/stable-diffusion-v1-4``
    -> ``stable-diffusion-v1-4``), at most 40 characters."""
    return slug(ref.rstrip("/").rsplit("/", 1)[-1])[:40]


def suite_concepts(suite: SuiteConfig, model: str, source: str) -> list[ConceptConfig]:
    """The suite's concepts for ``model``, as its world knows them (see the module docstring)."""
    from ..concepts.world import world_owning
    from ..probes.prompts import WACE_CONCEPTS, wace_concept, wace_retain

    world = world_owning(model)
    known = world.known_concepts()
    spec = suite.concepts
    if isinstance(spec, ConceptSet):
        if spec.set == "paper":
            if not world.open_vocabulary:
                raise UserError(f"{source}: concepts: the paper's concepts are real objects and artists; model "
                                f"'{model}' belongs to the closed world '{world.name}' (use {{set: world}})")
            return [ConceptConfig(name=c.word, kind=c.kind, retain=tuple(wace_retain(c.key)))
                    for c in WACE_CONCEPTS.values() if spec.kind in (None, c.kind)]
        names = [n for n in known if spec.kind in (None, world.concept_kind(n))]
        if not names:
            what = f" of kind '{spec.kind}'" if spec.kind else ""
            raise UserError(f"{source}: concepts: the world of model '{model}' ('{world.name or 'open'}') defines "
                            f"no concepts{what}; list them instead")
        return [ConceptConfig(name=n, kind=world.concept_kind(n) or "object") for n in names]
    out = []
    for i, item in enumerate(spec):
        name = item if isinstance(item, str) else item.name
        if known and name not in known:
            raise UserError(f"{source}: concepts[{i}]: unknown concept '{name}' for model '{model}'; its world "
                            f"knows: {', '.join(known)}")
        if not isinstance(item, str):
            out.append(item)
        elif known:
            out.append(ConceptConfig(name=name, kind=world.concept_kind(name) or "object"))
        elif wace_concept(name) is not None:
            c = wace_concept(name)
            out.append(ConceptConfig(name=c.word, kind=c.kind, retain=tuple(wace_retain(c.key))))
        else:
            raise UserError(f"{source}: concepts[{i}]: unknown concept '{name}': not one of the paper's 13 "
                            f"concepts ({', '.join(WACE_CONCEPTS)}); give it as a mapping "
                            "{name, kind, retain}")
    return out


def _lookup(reg, name: str, where: str, source: str):
    """``reg.get(name)`` with an unknown name's one-line error naming the file and key."""
    try:
        return reg.get(name)
    except UserError as exc:
        raise UserError(f"{source}: {where}: {exc}") from None


def _technique_params(entry: TechniqueEntry, point: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """The technique's params at a grid point, defaults filled (so that a default written out
    and the same default left out are one cell)."""
    from .. import registry

    cls = _lookup(registry.techniques, entry.name, where.removesuffix(".params"), source)
    try:
        params = cls.Params.model_validate({**entry.params, **point})
    except ValidationError as err:
        raise UserError(validation_message(err, source, prefix=where)) from None
    return params.model_dump(mode="json")


class CellSpec(NamedTuple):
    """A cell before ``prepare()``: its id, run config and the suite setting it stands for
    (``technique``: the entry's label, ``grid``: its grid point, ``concept``, ``seed``, ``model``)."""

    id: str
    config: RunConfig
    setting: dict[str, Any]


def cell_configs(suite: SuiteConfig, source: str = "suite") -> list[CellSpec]:
    """A :class:`CellSpec` for every cell, in the order models × techniques × grid points ×
    concepts × seeds; unknown techniques, parameters and concepts and duplicate cells are a
    :class:`UserError` naming ``source`` and the key. Reads configs only."""
    from .. import registry

    for i, ref in enumerate(suite.metrics):
        _lookup(registry.metrics, ref.name, f"metrics[{i}]", source)
    for i, ref in enumerate(suite.probes):
        _lookup(registry.probes, ref.name, f"probes[{i}]", source)
    out: list[CellSpec] = []
    where_of: dict[str, str] = {}
    by_spec: dict[str, str] = {}
    for model in suite.models:
        concepts = suite_concepts(suite, model, source)
        for t, entry in enumerate(suite.techniques):
            points = entry.points() or [{}]
            for point in points:
                params = _technique_params(entry, point, f"techniques[{t}].params", source)
                grid_part = "".join(f"-{slug(k)}={slug(v)}" for k, v in point.items())
                for concept in concepts:
                    for seed in suite.seeds:
                        cell_id = (f"{model_slug(model)}-{slug(entry.label)}{grid_part}-{slug(concept.name)}"
                                   f"-s{seed}")
                        where = f"techniques[{t}] ({entry.label}), concept '{concept.name}', seed {seed}"
                        if len(suite.models) > 1:
                            where = f"model '{model}', {where}"
                        if cell_id in where_of:
                            raise UserError(f"{source}: duplicate cell '{cell_id}': {where_of[cell_id]} and {where}")
                        data = {
                            "name": cell_id, "model": model, "technique": {"name": entry.name, "params": params},
                            "concept": concept.model_dump(mode="json"),
                            "metrics": [m.model_dump(mode="json", exclude_none=True) for m in suite.metrics],
                            "probes": [p.model_dump(mode="json", exclude_none=True) for p in suite.probes],
                            "seed": seed, "device": suite.device, "dtype": suite.dtype,
                            "sampler": suite.sampler.model_dump(mode="json"),
                            "engine": suite.engine.model_dump(mode="json"),
                            "output_dir": suite.folder, "base_metrics": suite.base_metrics,
                        }
                        if suite.base_model is not None:
                            data["base_model"] = suite.base_model
                        try:
                            cfg = RunConfig.model_validate(data)
                        except ValidationError as err:
                            raise UserError(validation_message(err, source, prefix=f"cell '{cell_id}'")) from None
                        content = spec_dict(cfg)
                        content.pop("name")
                        key = short_hash(content)
                        if key in by_spec:
                            raise UserError(f"{source}: duplicate cell: '{cell_id}' ({where}) is the same run as "
                                            f"'{by_spec[key]}' ({where_of[by_spec[key]]})")
                        by_spec[key] = cell_id
                        where_of[cell_id] = where
                        out.append(CellSpec(cell_id, cfg, {"model": model, "technique": entry.label,
                                                           "grid": point, "concept": concept.name, "seed": seed}))
                        if len(out) > MAX_CELLS:
                            raise UserError(f"{source}: more than {MAX_CELLS} cells; split the suite or shrink "
                                            "its grids")
    return out


class PlannedCell(NamedTuple):
    cell: Cell
    plan: Any  # evallearn.runner.Plan
    setting: dict[str, Any]


def plan_cells(suite: SuiteConfig, source: str = "suite") -> list[PlannedCell]:
    """Each cell with its :class:`~evallearn.runner.Plan` (prepared: params, compatibility,
    requests; no weights loaded) and its setting."""
    from ..runner import prepare

    out = []
    for cell_id, cfg, setting in cell_configs(suite, source):
        try:
            plan = prepare(cfg)
        except UserError as exc:
            lines = str(exc).splitlines() or [""]
            raise UserError("\n".join(f"{source}: cell '{cell_id}': {line}" for line in lines)) from None
        out.append(PlannedCell(Cell(cell_id, cfg, plan.spec_hash), plan, setting))
    return out


def expand(suite: SuiteConfig, source: str = "suite") -> list[Cell]:
    """The suite's cells, each checked by :func:`evallearn.runner.prepare` (no weights loaded)."""
    return [p.cell for p in plan_cells(suite, source)]


def suite_hash(suite: SuiteConfig) -> str:
    """The suite's spec hash (everything but where it is written)."""
    data = suite.model_dump(mode="json")
    data.pop("output_dir", None)
    return short_hash(data)
