"""Run configuration: YAML/JSON -> pydantic models -> a frozen, hashable spec.

Every model forbids unknown keys, so a misspelled key is an error that names it (the peer
silently drops them). ``--set a.b=value`` overrides are applied to the raw mapping before
validation, so they are checked like any other key. The resolved config hashes to a spec id
(:func:`spec_hash`); the same config always lands in the same run directory, which is what
makes resume free.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentRef(_Strict):
    """A registered component by name, with its parameters (validated by the component)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: the key of this entry in results (default: ``name``); lets one metric appear twice.
    id: str | None = None

    @property
    def key(self) -> str:
        return self.id or self.name


ConceptKind = Literal["object", "style", "attribute", "nudity", "violence", "person", "other"]


class ConceptConfig(_Strict):
    name: str
    kind: ConceptKind = "object"
    synonyms: tuple[str, ...] = ()
    retain: tuple[str, ...] = ()


class SamplerConfig(_Strict):
    scheduler: Literal["ddim", "pndm", "dpm++", "euler", "euler_a", "lms", "default"] = "ddim"
    steps: int = Field(20, ge=1, le=1000)
    #: None = the model's own (7.5 for Stable Diffusion, the toy model's measured best)
    guidance_scale: float | None = Field(None, ge=0.0)
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    eta: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1)


class RunConfig(_Strict):
    name: str = "run"
    model: str = "toy"
    technique: ComponentRef = ComponentRef(name="free_run")
    concept: ConceptConfig
    metrics: tuple[ComponentRef, ...] = ()
    probes: tuple[ComponentRef, ...] = ()
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    sampler: SamplerConfig = SamplerConfig()
    output_dir: str = "runs"
    #: the untouched model scored as "before" (default: ``model``). Set it when ``model`` is an
    #: already-unlearned checkpoint evaluated with ``free_run``.
    base_model: str | None = None
    base_metrics: bool = True

    @field_validator("metrics", "probes", mode="before")
    @classmethod
    def _names_to_refs(cls, value: Any) -> Any:
        # ``metrics: [clip_score]`` is shorthand for ``[{name: clip_score}]``.
        if isinstance(value, list | tuple):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\\0") or value.startswith("."):
            raise ValueError("must be a plain name (no slashes, not starting with '.')")
        return value


# Keys that choose where results go but not what they are: left out of the spec hash.
_NOT_HASHED = ("output_dir",)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line naming the first offending key."""
    first = err.errors()[0]
    loc = _format_loc(tuple(first["loc"]))
    key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    return f"{source}: invalid value for '{key}': {first['msg']}"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set '{item}': expected KEY=VALUE, e.g. --set sampler.steps=10")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"--set '{item}': empty key")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise UserError(f"--set '{item}': '{'.'.join(path[: i + 1])}' is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def read_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        line = str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(validation_message(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(read_mapping(path), overrides or [])
    return parse_config(data, str(path))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


def spec_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as hashed: everything that determines the results."""
    data = config.model_dump(mode="json")
    for key in _NOT_HASHED:
        data.pop(key, None)
    return data


def spec_hash(config: RunConfig) -> str:
    return short_hash(spec_dict(config))
