"""Load a CLIP model + processor by hub id, local folder, or a ref a world owns (its own CLIP)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import UserError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def auto_clip_ref(model, default: str = DEFAULT_CLIP) -> str:
    """The CLIP that goes with a run's model (``clip_model: auto``): the tiny random CLIP for the
    tiny-random pipeline, the world's own CLIP for a world's model, else ``default``."""
    if getattr(model, "ref", None) == "tiny-random":
        return "tiny-random"
    from ..concepts.world import world_of

    return world_of(model).clip_ref(model) or default


def _world_clip(ref: str) -> Path | None:
    from ..concepts.world import loaded_worlds

    for world in loaded_worlds():
        try:
            folder = world.clip_folder(ref)
        except ImportError:
            continue
        if folder is not None:
            return folder
    return None


def clip_folder(ref: str) -> Path:
    folder = _world_clip(ref)
    if folder is not None:
        return folder
    if ref == "tiny-random":
        from .loading import tiny_random_dir

        return tiny_random_dir("clip")
    from .hub import cached_snapshot, is_local

    path = Path(ref).expanduser()
    if is_local(ref):
        if not (path / "config.json").is_file():
            raise UserError(
                f"CLIP model folder {path} has no config.json; provide a folder saved with "
                "CLIPModel.save_pretrained (config.json + model.safetensors + tokenizer/processor files)"
            )
        return path
    folder = cached_snapshot(ref)
    if folder is None:
        raise UserError(
            f"CLIP model '{ref}' is not in the local Hugging Face cache; run `hf download {ref}` "
            "where there is network, or set clip_model to a local folder"
        )
    return folder


@lru_cache(maxsize=4)
def load_clip(ref: str, device: str = "cpu"):
    from transformers import CLIPModel, CLIPProcessor

    from .loading import quiet_hf

    quiet_hf()
    folder = clip_folder(ref)
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        raise UserError(f"CLIP model '{ref}' could not be loaded from {folder}: {str(exc).splitlines()[0]}") from None
    return model, processor


def _embedding(out):
    # transformers 5 returns a model output whose ``pooler_output`` is the projected embedding.
    return out if hasattr(out, "norm") else out.pooler_output


def clip_embed_images(model, processor, images, device: str = "cpu"):
    import torch

    with torch.no_grad():
        pixel = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        emb = _embedding(model.get_image_features(pixel_values=pixel))
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def clip_embed_texts(model, processor, texts, device: str = "cpu"):
    import torch

    with torch.no_grad():
        tok = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        emb = _embedding(model.get_text_features(input_ids=tok["input_ids"].to(device),
                                                 attention_mask=tok["attention_mask"].to(device)))
    return torch.nn.functional.normalize(emb.float(), dim=-1)
