"""Resolve a model reference (a ref a world owns, a local folder, or a hub id) and load its pipeline.

Resolution reads only JSON configs, so ``eval-learn validate`` can check compatibility before
any weights load. Loading honours offline mode: with ``HF_HUB_OFFLINE=1`` only the local cache
is used, and a hub id that is not there is a one-line error saying how to get it.

Inside :func:`no_fetch` (what ``eval-learn validate`` uses) nothing is built or downloaded: hub
ids are read from the local cache only, whatever ``HF_HUB_OFFLINE`` says, and the tiny random
pipeline is described from its known architecture without building it. Built weights live in
:func:`cache_home`: ``$EVALLEARN_CACHE``, by default ``~/.cache/evallearn``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

#: a tiny random-weight SD-1.x pipeline built on first use: for smoke runs of the harness itself
TINY = "tiny-random"


_NO_FETCH: contextvars.ContextVar[bool] = contextvars.ContextVar("evallearn_no_fetch", default=False)


@contextlib.contextmanager
def no_fetch():
    """Within this block nothing is downloaded or built (used by ``validate``)."""
    token = _NO_FETCH.set(True)
    try:
        yield
    finally:
        _NO_FETCH.reset(token)


def fetch_allowed() -> bool:
    """Whether a missing model or dataset may be downloaded (or built) now."""
    return not _NO_FETCH.get() and not _offline()


def cache_home() -> Path:
    """Where built weights (the tiny random pipeline and CLIP) are kept: ``$EVALLEARN_CACHE``,
    by default ``~/.cache/evallearn``."""
    return Path(os.environ.get("EVALLEARN_CACHE", Path.home() / ".cache" / "evallearn"))


def tiny_random_dir(kind: str = "pipeline") -> Path:
    """Build (once, deterministically from seed 0) and return the tiny random pipeline or CLIP folder."""
    from .tiny import save_tiny_clip, save_tiny_pipeline

    folder = cache_home() / f"tiny-random-{kind}-v1"
    marker = folder / ("model_index.json" if kind == "pipeline" else "config.json")
    if not marker.is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        (save_tiny_pipeline if kind == "pipeline" else save_tiny_clip)(tmp, seed=0)
        try:
            tmp.rename(folder)
        except OSError:  # another process built it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class ModelInfo:
    ref: str
    path: Path
    tags: frozenset[str]
    pipeline_class: str
    default_size: int
    #: the classifier-free guidance the model is meant to be sampled with (used where the config's
    #: ``sampler.guidance_scale`` is left unset): 7.5 for Stable Diffusion, as its model cards use
    default_guidance: float = 7.5
    #: pixels per latent pixel (2 ** (VAE blocks - 1)): 8 for Stable Diffusion
    vae_factor: int = 8
    #: UNet resolution levels (down blocks; each but the last halves the latent): 4 for SD
    unet_levels: int = 4
    #: False while the weights do not exist yet (``validate`` of a never-built tiny-random)
    built: bool = True
    #: the world (``evallearn.worlds`` entry point) whose concepts and judges the model uses
    world: str = "open"

    @property
    def min_size(self) -> int:
        """The smallest height/width accepted: the UNet's deepest level still 2x2 latent pixels
        (128 for Stable Diffusion, 16 for the toy model); below it the bottleneck is one pixel."""
        return self.vae_factor * 2 ** (self.unet_levels - 1) * 2

    def describe(self) -> dict:
        return {"ref": self.ref, "path": str(self.path), "tags": sorted(self.tags),
                "pipeline_class": self.pipeline_class, "default_size": self.default_size,
                "default_guidance": self.default_guidance,
                "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        return folder_fingerprint(self.path) if self.built else "not-built"


_FULL_HASH_LIMIT = 256 << 20


def _hash_file(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(1 << 20))
            fh.seek(-(1 << 20), 2)
            h.update(fh.read())


@lru_cache(maxsize=16)
def folder_fingerprint(folder: Path) -> str:
    """A content hash of a model folder's weights and configs, so that retrained weights under
    the same name (``toy``, a folder) never reuse results of the old ones. Files up to 256 MiB
    are hashed whole; larger ones by size and their first and last MiB."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")):
        h.update(str(path.relative_to(folder)).encode())
        _hash_file(h, path)
    return h.hexdigest()[:16]


@lru_cache(maxsize=16)
def file_fingerprint(path: Path) -> str:
    """The content hash of one weights file (an ONNX detector, a state dict, a prompt array),
    hashed as :func:`folder_fingerprint` hashes each file."""
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return h.hexdigest()[:16]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_folder(ref: str) -> Path:
    """Local snapshot folder of a hub id, downloading only if online."""
    from .hub import cached_snapshot, download_snapshot

    hint = (f"model '{ref}' is not in the local Hugging Face cache; download it on a machine with "
            f"network (`hf download {ref}`) and copy the cache, or set `model:` to a local folder")
    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    folder = cached_snapshot(ref, allow_patterns=patterns)
    if folder is not None:
        return folder
    if _NO_FETCH.get():
        raise UserError(f"{hint}; `validate` downloads nothing (`eval-learn run` fetches it when "
                        "HF_HUB_OFFLINE is unset)") from None
    if _offline():
        raise UserError(hint) from None
    try:
        return download_snapshot(ref, allow_patterns=patterns)
    except Exception as exc:
        raise UserError(f"{hint} ({type(exc).__name__})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def inspect_folder(ref: str, folder: Path) -> ModelInfo:
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"model folder {folder} is not a diffusers pipeline (no model_index.json)")
    cls = _read_json(index).get("_class_name", "")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    size = int(unet.get("sample_size", 64)) * factor
    tags = set()
    if cls.startswith("StableDiffusionXL"):
        tags.add("sdxl")
    elif cls.startswith("StableDiffusion"):
        tags.add("sd2" if text.get("hidden_size") == 1024 else "sd1")
    else:
        tags.add(cls.lower() or "unknown")
    levels = max(1, len(unet.get("down_block_types", [0, 0, 0, 0])))
    return ModelInfo(ref=ref, path=folder, tags=frozenset(tags), pipeline_class=cls, default_size=size,
                     vae_factor=factor, unet_levels=levels)


#: the tiny random pipeline as :func:`evallearn.models.tiny.build_tiny_pipeline` builds it
#: (latent 32, VAE factor 2, two UNet levels), described without building it
_TINY_INFO = dict(tags=frozenset({"sd1"}), pipeline_class="StableDiffusionPipeline", default_size=64,
                  vae_factor=2, unet_levels=2, default_guidance=6.0)


def _world_model(ref: str) -> ModelInfo | None:
    """The model as the first world that owns ``ref`` describes it (worlds in name order)."""
    from ..concepts.world import loaded_worlds

    for world in loaded_worlds():
        info = world.resolve_model(ref)
        if info is not None:
            return info
    return None


def resolve_model(ref: str) -> ModelInfo:
    info = _world_model(ref)
    if info is not None:
        return info
    if ref == TINY:
        folder = cache_home() / "tiny-random-pipeline-v1"
        if _NO_FETCH.get() and not (folder / "model_index.json").is_file():
            return ModelInfo(ref=ref, path=folder, built=False, **_TINY_INFO)
        info = inspect_folder(ref, tiny_random_dir("pipeline"))
        return replace(info, default_guidance=6.0)
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        if not path.is_dir():
            raise UserError(f"model folder {path} does not exist")
        return inspect_folder(ref, path)
    return inspect_folder(ref, _hub_folder(ref))


def quiet_hf() -> None:
    """No per-file progress bars from diffusers/transformers/hub when loading weights."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


_DEVICE = re.compile(r"(cpu|mps|cuda|xpu)(?::([0-9]+))?")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used by this torch (None when it can). Imports torch, loads nothing."""
    m = _DEVICE.fullmatch(device)
    if not m:
        return f"device '{device}': not a device (use cpu, cuda, cuda:N or mps)"
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return None if index in (None, "0") else f"device '{device}': there is one cpu device; use 'cpu'"
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"device '{device}': this torch sees no CUDA device (torch {torch.__version__}); use 'cpu'"
        n = torch.cuda.device_count()
        if index is not None and int(index) >= n:
            return f"device '{device}': no such CUDA device; {n} visible (cuda:0 .. cuda:{n - 1})"
        return None
    if kind == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if ok else f"device '{device}': MPS is not available in this torch; use 'cpu'"
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return f"device '{device}': this torch sees no XPU device; use 'cpu'"
    if index is not None and int(index) >= xpu.device_count():
        return f"device '{device}': no such XPU device; {xpu.device_count()} visible"
    return None


_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def load_pipeline(info: ModelInfo, device: str = "cpu", dtype: str = "float32"):
    """Load the pipeline from its local folder, safety checker off, progress bar off."""
    import torch
    from diffusers import DiffusionPipeline

    quiet_hf()
    kwargs = dict(torch_dtype=getattr(torch, _DTYPES[dtype]), local_files_only=True)
    if info.pipeline_class.startswith("StableDiffusion"):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(info.path), **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model '{info.ref}' could not be loaded from {info.path}: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
