"""Engine options: how a loaded pipeline is run while a run generates its images.

The ``engine:`` section of a run config (:class:`EngineConfig`) sets the generation precision,
the attention kernel, the memory layout, ``torch.compile`` of the UNet, fused QKV projections
and the batch size. :func:`applied` puts them on a pipeline for the length of a ``with`` block
and takes every one of them off again afterwards, exactly: parameters are swapped back to the
very tensors they held, attention processors are restored, compilation is dropped. So a
technique that edits or fine-tunes the model after the "before" images, and probes that take
gradients, always see the pipeline as it was loaded.

Which options change images (see docs/performance.md for the measured differences):

* ``precision`` (fp16 / bf16) changes images well beyond the last bit, so it is part of the run's
  spec hash and of the base-image folder key (:func:`image_spec`); at its default it adds nothing,
  so runs made before the engine section existed keep their run directories.
* ``attention``, ``channels_last``, ``fuse_qkv``, ``compile`` and ``batch_size`` compute the same
  function with other kernels; images agree within a stated tolerance, and they are left out of
  the spec hash, so turning them on does not regenerate stored images. A run resumed with other
  such options mixes images that agree within that tolerance, not bit for bit.

CUDA graphs are not offered: see docs/performance.md for why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Precision = Literal["fp32", "fp16", "bf16"]
_TORCH_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_CONFIG_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

#: fraction of the free accelerator memory ``batch_size: auto`` plans to use
AUTO_MEMORY_FRACTION = 0.8


class EngineConfig(BaseModel):
    """The ``engine:`` section of a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the UNet's and text encoder's dtype while generating; None = as loaded (the run's ``dtype``)
    precision: Precision | None = None
    #: the VAE's dtype when ``precision`` is set: ``fp32`` (decode in float32) or ``same``
    vae_precision: Literal["fp32", "same"] = "fp32"
    #: ``sdpa`` = torch's scaled_dot_product_attention (diffusers' default); ``math`` = explicit softmax(QK^T)V
    attention: Literal["sdpa", "math"] = "sdpa"
    #: UNet weights (and so its activations) in channels-last memory layout
    channels_last: bool = False
    #: ``torch.compile`` the UNet; the compile time is measured before generating and reported
    compile: bool = False
    #: diffusers' fused QKV projections (one matmul for Q, K, V; one for K, V in cross-attention)
    fuse_qkv: bool = False
    #: images per batch: a number, ``auto`` (from free CUDA memory), or None = ``sampler.batch_size``
    batch_size: int | Literal["auto"] | None = None
    #: the largest batch ``auto`` picks
    max_auto_batch: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> EngineConfig:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1, or 'auto'")
        if self.fuse_qkv and self.attention != "sdpa":
            raise ValueError("fuse_qkv needs attention: sdpa (diffusers' fused processor uses SDPA)")
        return self


def image_spec(config: Any) -> dict[str, str]:
    """The engine settings that change images, for the spec hash and the base-image key.

    Empty unless ``precision`` differs from the precision the model is loaded in (or the VAE is
    decoded in another dtype than that), so a config without an ``engine:`` section hashes as
    it did before the section existed.
    """
    engine: EngineConfig = getattr(config, "engine", None) or EngineConfig()
    loaded = _CONFIG_DTYPE[config.dtype]
    if engine.precision is None:
        return {}
    vae = "fp32" if engine.vae_precision == "fp32" else engine.precision
    if engine.precision == loaded and vae == loaded:
        return {}
    return {"precision": engine.precision, "vae_precision": vae}


def base_key(config: Any) -> dict[str, Any]:
    """Engine settings for the key of the shared base-image folder: every option that is not at
    its default, since any of them may move a pixel by a grey level and base images are shared
    by runs. Empty at defaults, so the folders of configs without an ``engine:`` section keep
    their keys."""
    engine: EngineConfig = getattr(config, "engine", None) or EngineConfig()
    changed = engine.model_dump(mode="json", exclude_defaults=True)
    if engine.batch_size != "auto":
        changed.pop("max_auto_batch", None)
    return {"engine": changed} if changed else {}


def record(extras: dict, state: EngineState) -> None:
    """Accumulate one :func:`applied` block into ``extras["engine"]``: seconds (summed over the
    run's generation phases), the batch sizes used and notes."""
    out = extras.setdefault("engine", {"seconds": {}, "batch_sizes": [], "notes": []})
    for key, value in state.timings.items():
        out["seconds"][key] = round(out["seconds"].get(key, 0.0) + value, 3)
    out["batch_sizes"].append(state.batch_size)
    out["notes"].extend(n for n in state.notes if n not in out["notes"])


def batch_from_memory(free_bytes: int, per_image_bytes: int, cap: int,
                      fraction: float = AUTO_MEMORY_FRACTION) -> int:
    """The largest batch whose working memory fits in ``fraction`` of ``free_bytes`` (1..cap)."""
    if per_image_bytes <= 0:
        return cap
    return max(1, min(cap, int(fraction * free_bytes) // per_image_bytes))


@dataclass
class EngineState:
    """What :func:`applied` did: the batch size to use, timings (seconds) and notes."""

    batch_size: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- parameter swaps (exactly reversible) ---------------------------------------------------


class _Swaps:
    """Replace tensors' ``.data`` and put the very same tensors back on :meth:`undo`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, Any]] = []

    def convert(self, module, dtype=None, channels_last: bool = False) -> None:
        import torch

        seen: set[int] = set()
        tensors = [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            new = t.data
            if dtype is not None and new.is_floating_point() and new.dtype != dtype:
                new = new.to(dtype)
            if channels_last and new.dim() == 4:
                new = new.contiguous(memory_format=torch.channels_last)
            if new is not t.data:
                self._saved.append((t, t.data))
                t.data = new

    def undo(self) -> None:
        for t, old in reversed(self._saved):
            t.data = old
        self._saved.clear()


def _stock_sdpa(proc) -> bool:
    return type(proc).__name__ == "AttnProcessor2_0"


def _set_math_attention(unet, state: EngineState) -> dict | None:
    from diffusers.models.attention_processor import AttnProcessor

    before = dict(unet.attn_processors)
    if not any(_stock_sdpa(p) for p in before.values()):
        state.notes.append("attention=math: no stock SDPA processors to replace")
        return None
    unet.set_attn_processor({k: (AttnProcessor() if _stock_sdpa(p) else p) for k, p in before.items()})
    return before


def _fuse_qkv(unet, state: EngineState) -> dict | None:
    """Fuse Q/K/V projections of every attention module; None (and a note) where the model has
    processors other than diffusers' stock SDPA one, which fusing would replace."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    before = dict(unet.attn_processors)
    if not before or not all(_stock_sdpa(p) for p in before.values()):
        state.notes.append("fuse_qkv skipped: the UNet has custom attention processors")
        return None
    for module in unet.modules():
        if isinstance(module, Attention):
            module.fuse_projections(fuse=True)
    unet.set_attn_processor(FusedAttnProcessor2_0())
    return before


def _unfuse_qkv(unet, before: dict) -> None:
    from diffusers.models.attention_processor import Attention

    unet.set_attn_processor(before)
    for module in unet.modules():
        if isinstance(module, Attention):
            for name in ("to_qkv", "to_kv", "to_added_qkv"):
                if hasattr(module, name):
                    delattr(module, name)
            module.fused_projections = False


def _wrap_vae_decode(vae) -> None:
    """Decode latents of any dtype in the VAE's own dtype (fp16 UNet latents -> fp32 VAE)."""
    original = vae.decode

    def decode(z, *args, **kwargs):
        return original(z.to(vae.dtype), *args, **kwargs)

    vae.decode = decode


def _unwrap_vae_decode(vae) -> None:
    vae.__dict__.pop("decode", None)


# -- batch size and compile warm-up ----------------------------------------------------------


def _cfg(req) -> bool:
    return req.guidance_scale > 1.0


def _shapes(pipe, requests: Sequence, batch_size: int) -> list[tuple[int, int, int, str, int]]:
    """Distinct UNet call shapes of the planned batches: (rows, latent h, latent w, scheduler, steps)."""
    from .generation import plan_batches

    factor = getattr(pipe, "vae_scale_factor", 8)
    out = []
    for batch in plan_batches(requests, batch_size):
        r = batch[0]
        shape = (len(batch) * (2 if _cfg(r) else 1), r.height // factor, r.width // factor, r.scheduler, r.steps)
        if shape[:3] not in [s[:3] for s in out]:
            out.append(shape)
    return out


def _unet_inputs(pipe, rows: int, h: int, w: int, scheduler: str, steps: int, device: str):
    import torch

    from .generation import make_scheduler

    unet = pipe.unet
    sched = make_scheduler(scheduler, pipe.scheduler.config)
    sched.set_timesteps(steps, device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.randn(rows, unet.config.in_channels, h, w, generator=g).to(device=device, dtype=unet.dtype)
    seq = getattr(pipe.tokenizer, "model_max_length", 77)
    text = torch.randn(rows, seq, unet.config.cross_attention_dim, generator=g).to(device=device, dtype=unet.dtype)
    return sample, sched.timesteps[0], text


def _unet_call(pipe, inputs) -> None:
    sample, t, text = inputs
    pipe.unet(sample, t, encoder_hidden_states=text, timestep_cond=None, cross_attention_kwargs=None,
              added_cond_kwargs=None, return_dict=False)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _compile_warmup(pipe, shapes, device: str) -> float:
    """Compile the UNet for each planned shape; returns the compile time (first call minus a
    second, steady call, summed over shapes)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for shape in shapes:
            inputs = _unet_inputs(pipe, *shape, device)
            times = []
            for _ in range(2):
                _sync(device)
                t0 = time.perf_counter()
                _unet_call(pipe, inputs)
                _sync(device)
                times.append(time.perf_counter() - t0)
            total += max(0.0, times[0] - times[1])
    return total


def probe_per_image_bytes(pipe, request, device: str) -> int:
    """Peak CUDA working memory of one image: the larger of a UNet step (with CFG) and a VAE decode."""
    import torch

    factor = getattr(pipe, "vae_scale_factor", 8)
    h, w = request.height // factor, request.width // factor
    rows = 2 if _cfg(request) else 1
    peaks = []
    with torch.no_grad():
        for n in (1, 2):  # the difference between 2 images and 1 is one image's working memory
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            _unet_call(pipe, _unet_inputs(pipe, rows * n, h, w, request.scheduler, request.steps, device))
            torch.cuda.synchronize()
            unet_peak = torch.cuda.max_memory_allocated() - base
            latents = torch.zeros(n, pipe.vae.config.latent_channels, h, w, device=device, dtype=pipe.vae.dtype)
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            pipe.vae.decode(latents, return_dict=False)
            torch.cuda.synchronize()
            peaks.append(max(unet_peak, torch.cuda.max_memory_allocated() - base))
            del latents
    return max(peaks[1] - peaks[0], peaks[0] // 2, 1)


def _auto_batch(pipe, engine: EngineConfig, device: str, requests: Sequence, fallback: int,
                state: EngineState) -> int:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available() or not requests:
        state.notes.append(f"batch_size=auto on {device}: using sampler.batch_size ({fallback})")
        return fallback
    t0 = time.perf_counter()
    largest = max(requests, key=lambda r: (r.height * r.width, _cfg(r)))
    per_image = probe_per_image_bytes(pipe, largest, device)
    free, _total = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # cached by torch, reusable
    size = batch_from_memory(free, per_image, engine.max_auto_batch)
    state.timings["engine_batch_probe"] = time.perf_counter() - t0
    state.notes.append(f"batch_size=auto: {size} ({per_image / 2**20:.0f} MiB per image, "
                       f"{free / 2**30:.1f} GiB free)")
    return size


# -- the context manager ---------------------------------------------------------------------


_DEFAULT_OPTIONS = EngineConfig().model_dump(exclude={"batch_size", "max_auto_batch"})


@contextmanager
def applied(pipe, engine: EngineConfig | None = None, device: str = "cpu", requests: Sequence = (),
            batch_size: int = 16) -> Iterator[EngineState]:
    """Apply ``engine`` to ``pipe`` for the ``with`` block and undo it afterwards.

    ``requests`` are the requests about to be generated (for ``batch_size: auto`` and for
    compiling each planned batch shape up front); ``batch_size`` is ``sampler.batch_size``.
    """
    import torch

    engine = engine or EngineConfig()
    t0 = time.perf_counter()
    size = engine.batch_size if isinstance(engine.batch_size, int) else batch_size
    state = EngineState(batch_size=size)
    if engine.model_dump(exclude={"batch_size", "max_auto_batch"}) == _DEFAULT_OPTIONS and engine.batch_size != "auto":
        yield state  # nothing to put on the pipeline (which need not be a diffusers one)
        return
    missing = [a for a in ("unet", "vae", "components") if not hasattr(pipe, a)]
    if missing:
        from .errors import UserError

        raise UserError(f"engine: options other than batch_size need a diffusers pipeline with a UNet and a VAE; "
                        f"this {type(pipe).__name__} has no {', '.join(missing)}")
    swaps = _Swaps()
    unet = pipe.unet
    attn_before = fused_before = None
    wrapped_vae = compiled = False
    try:
        if engine.precision is not None:
            dtype = getattr(torch, _TORCH_DTYPE[engine.precision])
            for name, comp in pipe.components.items():
                if isinstance(comp, torch.nn.Module) and name != "vae":
                    swaps.convert(comp, dtype, channels_last=engine.channels_last and comp is unet)
            vae_dtype = torch.float32 if engine.vae_precision == "fp32" else dtype
            swaps.convert(pipe.vae, vae_dtype)
            _wrap_vae_decode(pipe.vae)
            wrapped_vae = True
        elif engine.channels_last:
            swaps.convert(unet, None, channels_last=True)
        if engine.attention == "math":
            attn_before = _set_math_attention(unet, state)
        if engine.fuse_qkv:
            fused_before = _fuse_qkv(unet, state)
        if engine.batch_size == "auto":
            state.batch_size = _auto_batch(pipe, engine, device, requests, batch_size, state)
        state.timings["engine_apply"] = time.perf_counter() - t0 - state.timings.get("engine_batch_probe", 0.0)
        if engine.compile:
            unet.compile()
            compiled = True
            if requests:
                state.timings["engine_compile"] = _compile_warmup(pipe, _shapes(pipe, requests, state.batch_size),
                                                                  device)
        yield state
    finally:
        if compiled:
            unet._compiled_call_impl = None
        if fused_before is not None:
            _unfuse_qkv(unet, fused_before)
        if attn_before is not None:
            unet.set_attn_processor(attn_before)
        if wrapped_vae:
            _unwrap_vae_decode(pipe.vae)
        swaps.undo()
