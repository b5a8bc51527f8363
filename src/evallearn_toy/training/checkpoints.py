"""Resumable state of the text-to-image stage (``state.pt``)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_training_state(path: Path, unet, text_encoder, opt, sched, ema, step: int) -> None:
    """Raw weights, optimiser, schedule and EMA after ``step`` steps: everything a resumed run needs."""
    torch.save(
        {
            "unet": unet.state_dict(),
            "text_encoder": text_encoder.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "ema_unet": ema.shadow[0].state_dict(),
            "ema_text": ema.shadow[1].state_dict(),
            "step": step,
        },
        path,
    )


def load_training_state(path: Path) -> dict:
    """A resume checkpoint (``state.pt``) read with ``weights_only=True``: tensors, numbers and
    containers only, so a crafted pickle in the output folder runs nothing; anything else is a
    one-line error naming the file."""
    import pickle

    from evallearn.errors import UserError

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a training checkpoint this version can resume from "
                        f"(delete it to start over): {first}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path}: not a training checkpoint (no 'step'); delete it to start over")
    return state


def restore_training_state(state: dict, unet, text_encoder, opt, sched, ema) -> int:
    """Load ``state`` (from :func:`load_training_state`) into the live objects; returns its step."""
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    ema.shadow[0].load_state_dict(state["ema_unet"])
    ema.shadow[1].load_state_dict(state["ema_text"])
    return state["step"]
