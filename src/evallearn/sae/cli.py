"""``eval-learn sae``: train the sparse autoencoders that Concept Steerers and SAeUron read.

    eval-learn sae train --model toy --site text --out saes/toy-text
    eval-learn sae train --model CompVis/stable-diffusion-v1-4 --site text --layer 9 \\
        --prompts i2p.csv --steps 100000 --device cuda --out saes/sd14-text-l9
    eval-learn sae train --model toy --site unet --hookpoint up_blocks.1.attentions.1 --out saes/toy-up11

The folder it writes is what the techniques' ``sae`` parameter takes.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import RunConfig

#: the config's default ``model:``
DEFAULT_MODEL = RunConfig.model_fields["model"].default

app = typer.Typer(help="Sparse autoencoders on model activations (Concept Steerers, SAeUron, ItD).",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Train sparse autoencoders."""


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the SAE to (config.json, sae.safetensors)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model: a world's (e.g. the default), a local folder or a "
                              "cached hub id."),
    site: str = typer.Option("text", help="'text' (a text-encoder layer) or 'unet' (a UNet block)."),
    layer: int = typer.Option(None, help="Text-encoder layer (site text); default: the third from last (9 on SD 1.x)."),
    hookpoint: str = typer.Option("up_blocks.1.attentions.1", help="UNet module (site unet)."),
    prompts: Path = typer.Option(None, help="Prompt file (.txt one per line, or .csv with 'prompt'); default: "
                                 "the model's world's training captions, where it has them."),
    num_prompts: int = typer.Option(None, help="Prompts to use (default: 4000 for text, 256 for unet)."),
    gen_steps: int = typer.Option(20, help="Denoising steps per generation (site unet)."),
    guidance_scale: float = typer.Option(6.0, help="CFG scale of the generations (site unet)."),
    size: int = typer.Option(None, help="Image size of the generations (default: the model's)."),
    steps: int = typer.Option(2000, help="SAE training steps."),
    batch_size: int = typer.Option(4096, help="Rows per training step."),
    expansion: int = typer.Option(None, help="Latents per input dimension (default: 4 text, 16 unet)."),
    k: int = typer.Option(32, help="Active latents per row."),
    lr: float = typer.Option(4e-4, help="Adam learning rate."),
    seed: int = typer.Option(0, help="Seed of prompts, generations and training."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(None, help="torch threads (CPU)."),
) -> None:
    """Capture activations and train a TopK SAE on them."""
    import torch

    from ..concepts.world import world_of
    from ..errors import UserError
    from ..models.loading import load_pipeline, resolve_model
    from .capture import text_activations, text_layer, unet_activations
    from .data import read_prompts
    from .train import fraction_of_variance_unexplained, train_sae

    try:
        if threads:
            torch.set_num_threads(threads)
        if site not in ("text", "unet"):
            raise UserError(f"sae train: --site must be 'text' or 'unet', not '{site}'")
        info = resolve_model(model)
        n = num_prompts or (4000 if site == "text" else 256)
        if prompts is not None:
            texts = read_prompts(prompts)[:n]
        elif (texts := world_of(info).corpus(n, seed=seed)) is None:
            raise UserError(f"sae train: --prompts is required: model '{model}' has no caption corpus of its own")
        pipe = load_pipeline(info, device, "float32")
        pipe.set_progress_bar_config(disable=True)
        if site == "text":
            _, index = text_layer(pipe.text_encoder, layer)
            acts = text_activations(pipe, texts, index)
            where, exp = f"text_encoder.text_model.encoder.layers.{index}", expansion or 4
        else:
            side = size or info.default_size
            acts = unet_activations(pipe, texts, hookpoint, gen_steps, guidance_scale,
                                    seeds=[seed + i for i in range(len(texts))], height=side, width=side)
            where, exp = f"unet.{hookpoint}", expansion or 16
        rows = acts.reshape(-1, acts.shape[-1])
        typer.echo(f"{len(texts)} prompts -> {rows.shape[0]} activation rows of width {rows.shape[1]} at {where}")
        sae = train_sae(rows.to(device), expansion=exp, k=k, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                        hookpoint=where, meta={"model": model, "n_prompts": len(texts), "site": site,
                                               "gen_steps": gen_steps if site == "unet" else None},
                        log=lambda s, loss: typer.echo(f"step {s}: loss {loss:.4f}"))
        fvu = fraction_of_variance_unexplained(sae, rows.to(device))
        sae.cpu().save(out)
        typer.echo(f"wrote {out} (fraction of variance unexplained {fvu:.3f})")
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
