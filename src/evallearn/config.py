"""Run configuration: YAML/JSON -> pydantic models -> a frozen, hashable spec.

Every model forbids unknown keys, so a misspelled key is an error that names it (the peer
silently drops them). ``--set a.b=value`` overrides are applied to the raw mapping before
validation, so they are checked like any other key. The resolved config hashes to a spec id
(:func:`spec_hash`); the same config always lands in the same run directory, which is what
makes resume free.

Every user string that becomes a path component (the run name, metric and probe ids, component
names, the concept name) is checked here, once, and paths under the output folder are built with
:func:`safe_join`, which refuses to leave its root. A config file is capped in size and in how far
its YAML aliases expand, and is decoded as UTF-8, so a hostile file is a one-line error, not a
traceback or a memory blow-up.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .engine import EngineConfig, image_spec
from .errors import UserError
from .hashing import canonical, short_hash  # noqa: F401  (re-exported: config.short_hash)

#: a config file larger than this is refused before it is parsed
MAX_CONFIG_BYTES = 1 << 20
#: a YAML document whose aliases expand to more nodes than this is refused (an "alias bomb")
MAX_CONFIG_NODES = 100_000
#: the largest seed: torch generators take 64-bit seeds, and requests add small offsets to it
MAX_SEED = 2**63 - 1
#: run names are at most this many UTF-8 bytes (the run folder adds ``-<12 hex>``; 255 is the limit)
MAX_NAME_BYTES = 128

_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
_DEVICE = re.compile(r"cpu|mps|(cuda|xpu)(:[0-9]{1,3})?")


def _plain(value: str) -> str:
    """``value`` if it can be one file name component; else a ValueError saying why."""
    why = _is_plain(value)
    if why:
        raise ValueError(why)
    return value


def _is_plain(value: str) -> str | None:
    """Why ``value`` cannot be one file name component (None when it can)."""
    if not value or not value.strip():
        return "must not be empty"
    if any(c in value for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must be a plain name (no slashes, no control characters)"
    if value.startswith("."):
        return "must not start with '.'"
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes long"
    return None


def check_id(value: str) -> str:
    """An id or component name: letters, digits and ``_ . + -``, 1-64 characters, no ``..``."""
    if not _ID.fullmatch(value) or ".." in value:
        raise ValueError("must be 1-64 letters, digits or '_.+-', not starting with '.' or '-', "
                         "without '..'")
    return value


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root / part / ...`` where each part is one plain file name component; a part that is
    empty, ``.``/``..``, holds a separator or control character, is longer than 255 bytes, or a
    result outside ``root`` is a :class:`UserError`. Every path built from a user string goes
    through here."""
    root = Path(root)
    path = root
    for part in parts:
        part = str(part)
        bad = (not part or part in (".", "..") or any(c in part for c in "/\\\0")
               or any(ord(c) < 32 for c in part) or len(part.encode("utf-8")) > 255)
        if bad:
            raise UserError(f"refusing the file name {part!r} under {root}: it must be one plain name "
                            "(no slashes, not '.' or '..', at most 255 bytes)")
        path = path / part
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UserError(f"refusing {path}: it resolves outside {root}")
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentRef(_Strict):
    """A registered component by name, with its parameters (validated by the component)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: the key of this entry in results (default: ``name``); lets one metric appear twice.
    id: str | None = None

    @field_validator("name", "id")
    @classmethod
    def _plain_id(cls, value: str | None) -> str | None:
        return value if value is None else check_id(value)

    @property
    def key(self) -> str:
        return self.id or self.name


ConceptKind = Literal["object", "style", "attribute", "nudity", "violence", "person", "other"]


class ConceptConfig(_Strict):
    name: str
    kind: ConceptKind = "object"
    synonyms: tuple[str, ...] = ()
    retain: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _plain_concept(cls, value: str) -> str:
        return _plain(value)

    @field_validator("retain")
    @classmethod
    def _retain_is_not_the_concept(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        erased = {str(info.data.get("name", "")).strip().lower()}
        erased |= {w.strip().lower() for w in info.data.get("synonyms", ())}
        clash = [r for r in value if r.strip().lower() in erased]
        if clash:
            raise ValueError(f"holds the erased concept or one of its synonyms: {', '.join(clash)}")
        return value


class SamplerConfig(_Strict):
    scheduler: Literal["ddim", "pndm", "dpm++", "euler", "euler_a", "lms", "default"] = "ddim"
    steps: int = Field(20, ge=1, le=1000)
    #: None = the model's own (7.5 for Stable Diffusion, the toy model's measured best)
    guidance_scale: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    #: None = the model's own size; otherwise a multiple of the model's VAE factor, at least half
    #: the model's own size (checked against the model by ``validate``)
    height: int | None = Field(None, ge=8, le=8192)
    width: int | None = Field(None, ge=8, le=8192)
    eta: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    batch_size: int = Field(16, ge=1)


class RunConfig(_Strict):
    name: str = "run"
    model: str = "toy"
    technique: ComponentRef = ComponentRef(name="free_run")
    concept: ConceptConfig
    metrics: tuple[ComponentRef, ...] = ()
    probes: tuple[ComponentRef, ...] = ()
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    sampler: SamplerConfig = SamplerConfig()
    #: how the pipeline runs while generating (docs/performance.md); only ``precision`` is hashed
    engine: EngineConfig = EngineConfig()
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
        return _plain(value)

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be cpu, cuda, cuda:N, mps or xpu")
        return value

    @field_validator("output_dir")
    @classmethod
    def _output_dir_form(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise ValueError("must be a folder path")
        return value


# Keys that choose where results go but not what they are: left out of the spec hash.
_NOT_HASHED = ("output_dir",)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one(error: dict, source: str, prefix: str) -> str:
    loc = _format_loc(tuple(error["loc"]))
    key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if error["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    msg = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = repr(value)
    if isinstance(value, dict | list | tuple) or len(shown) > 60:
        return f"{source}: invalid value for '{key}': {msg}"
    return f"{source}: invalid value for '{key}' ({shown}): {msg}"


def validation_messages(err: ValidationError, source: str, prefix: str = "") -> list[str]:
    """One line per offending key."""
    lines = []
    for error in err.errors():
        line = _one(error, source, prefix)
        if line not in lines:
            lines.append(line)
    return lines


def validation_message(err: ValidationError, source: str, prefix: str = "") -> str:
    """Every offending key, one line each."""
    return "\n".join(validation_messages(err, source, prefix))


_KEY_PART = re.compile(r"[A-Za-z0-9_+-]+")


def _first_line(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem}{where}"
    text = " ".join(str(exc).split("\n")[:1]).strip()
    return text or type(exc).__name__


def _expanded_size(node: yaml.Node, where: str) -> None:
    """Refuse a YAML node graph whose aliases expand past :data:`MAX_CONFIG_NODES` or loop."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in on_path:
            raise UserError(f"{where}: a YAML alias refers to itself")
        on_path.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        on_path.discard(id(n))
        sizes[id(n)] = total
        if total > MAX_CONFIG_NODES:
            raise UserError(f"{where}: more than {MAX_CONFIG_NODES} values once YAML aliases are expanded")
        return total

    size(node)


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with the alias expansion capped; YAML errors are a one-line UserError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set '{item}': expected KEY=VALUE, e.g. --set sampler.steps=10")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if not key.strip():
        raise UserError(f"--set '{item}': empty key")
    bad = [p for p in path if not _KEY_PART.fullmatch(p)]
    if bad:
        raise UserError(f"--set '{item}': '{key.strip()}' is not a dotted key like sampler.steps "
                        f"(empty or odd part {bad[0]!r})")
    if not raw.strip():
        return path, ""
    try:
        return path, safe_yaml(raw, f"--set '{item}'")
    except UserError:
        if "\t" in raw:
            raise UserError(f"--set '{item}': the value holds a tab, which YAML does not allow "
                            "there; use spaces") from None
        raise


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
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
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: {size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "a config is a YAML or JSON text file") from None
    if "\0" in text:
        raise UserError(f"{path}: holds NUL bytes; a config is a YAML or JSON text file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON: {_first_line(exc)}") from None
        except RecursionError:
            raise UserError(f"{path}: nested too deeply") from None
    else:
        data = safe_yaml(text, str(path))
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


def spec_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as hashed: everything that determines the results."""
    data = config.model_dump(mode="json")
    for key in _NOT_HASHED:
        data.pop(key, None)
    data.pop("engine", None)  # only engine settings that change images are hashed, none at defaults
    if image_spec(config):
        data["engine"] = image_spec(config)
    return data


def spec_hash(config: RunConfig) -> str:
    return short_hash(spec_dict(config))
