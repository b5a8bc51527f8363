"""``eval-learn toy``: retrain the toy world's artefacts, or look at what the shipped model draws."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer

from . import DEFAULT_GUIDANCE

app = typer.Typer(help="The toy world: train its artefacts or show samples.", no_args_is_help=True)

_ARTEFACTS = ("pipeline", "clip", "classifier")


@app.command()
def train(
    out: Path = typer.Option(
        None, "--out", "-o", help="Folder for the artefacts and the log (default: a fresh temporary folder)."
    ),
    install: bool = typer.Option(
        False, "--install", help="Copy the trained pipeline, clip and classifier into the package's weights folder."
    ),
    seed: int = typer.Option(0, help="Seed of every random draw (data, initialisation, batches, noise)."),
    unet_steps: int = typer.Option(None, help="Text-to-image training steps (the long pole)."),
    vae_steps: int = typer.Option(None, help="VAE training steps."),
    clip_steps: int = typer.Option(None, help="Toy CLIP training steps."),
    classifier_steps: int = typer.Option(None, help="Classifier training steps."),
    n_train: int = typer.Option(None, help="Number of rendered training images."),
    unet_batch: int = typer.Option(None, help="Text-to-image batch size."),
    unet_lr: float = typer.Option(None, help="UNet learning rate."),
    text_lr: float = typer.Option(None, help="Text-encoder learning rate."),
    freeze_token_embedding: bool = typer.Option(
        None, "--freeze-token-embedding/--train-token-embedding",
        help="Keep the text encoder's token embedding as the toy CLIP left it (default: train it).",
    ),
    threads: int = typer.Option(2, help="torch threads (1 is faster when the machine is oversubscribed)."),
) -> None:
    """Retrain every toy artefact deterministically from SEED (defaults: the shipped weights' budgets)."""
    from .training import Budgets, train_all

    budgets = Budgets()
    for name, value in (
        ("unet_steps", unet_steps),
        ("vae_steps", vae_steps),
        ("clip_steps", clip_steps),
        ("classifier_steps", classifier_steps),
        ("n_train", n_train),
        ("unet_batch", unet_batch),
        ("unet_lr", unet_lr),
        ("text_lr", text_lr),
    ):
        if value is not None:
            if value <= 0:
                raise typer.BadParameter(f"--{name.replace('_', '-')} must be positive, got {value}")
            setattr(budgets, name, value)
    if freeze_token_embedding is not None:
        budgets.freeze_token_embedding = freeze_token_embedding
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="evallearn-toy-"))
    typer.echo(f"training the toy world into {out}")
    train_all(out, budgets, seed=seed, threads=threads)
    if install:
        from . import weights_dir

        dest = weights_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for name in _ARTEFACTS:
            if (dest / name).exists():
                shutil.rmtree(dest / name)
            shutil.copytree(out / name, dest / name)
        typer.echo(f"installed {', '.join(_ARTEFACTS)} into {dest}")
    typer.echo(f"done: {out}")


@app.command()
def show(
    out: Path = typer.Option(Path("toy_samples.png"), "--out", "-o", help="PNG file to write."),
    per_shape: int = typer.Option(8, help="Images per shape (one row per shape)."),
    seed: int = typer.Option(0, help="First seed; image j of every row uses seed + j."),
    steps: int = typer.Option(20, help="DDIM steps."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Classifier-free guidance scale (the toy model's own: 4)."),
    pipeline: Path = typer.Option(None, help="Pipeline folder (default: the shipped toy model)."),
    scale: int = typer.Option(4, help="Upscaling of each 32 px image in the grid."),
) -> None:
    """Write a labelled grid of the toy model's generations: one row per shape, with the classifier's label."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from . import COLOURS, SHAPES, STYLES, load_toy_classifier
    from .concepts import full_caption
    from .training.evaluate import generate

    if per_shape <= 0:
        raise typer.BadParameter("--per-shape must be positive")
    from diffusers import StableDiffusionPipeline

    from evallearn.progress import quiet_library_bars

    quiet_library_bars()  # no "Loading pipeline components" bar

    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(str(_pipeline_folder(pipeline)))
    pipe.set_progress_bar_config(disable=True)
    clf = load_toy_classifier()
    prompts, seeds, wanted = [], [], []
    for shape in SHAPES:
        for j in range(per_shape):
            colour, style = COLOURS[j % len(COLOURS)], STYLES[(j // len(COLOURS)) % len(STYLES)]
            prompts.append(full_caption(shape, colour, style))
            seeds.append(seed + j)
            wanted.append((shape, colour, style))
    images = generate(pipe, prompts, seeds, steps=steps, guidance=guidance)
    probs = clf.predict(images)
    cell, col_w, label_h, head_w = grid_geometry(scale)
    grid = Image.new("RGB", (head_w + per_shape * col_w, len(SHAPES) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for k, img in enumerate(images):
        r, c = divmod(k, per_shape)
        x, y = head_w + c * col_w, r * (cell + label_h)
        tile = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).resize((cell, cell), Image.NEAREST)
        grid.paste(tile, (x, y))
        shape, colour, style = wanted[k]
        got = [probs[h][k].argmax().item() for h in ("shape", "colour", "style")]
        lines = cell_labels(SHAPES[got[0]], COLOURS[got[1]], STYLES[got[2]])
        ok = lines[0] == shape
        for i, line in enumerate(lines):
            colour_rgb = ((0, 128, 0) if ok else (200, 0, 0)) if i == 0 else (60, 60, 60)
            draw.text((x + 2, y + cell + 2 + LINE_H * i), line, fill=colour_rgb)
        if c == 0:
            draw.text((4, y + cell // 2), shape, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    correct = sum(SHAPES[probs["shape"][k].argmax().item()] == wanted[k][0] for k in range(len(images)))
    typer.echo(f"wrote {out}: prompted shape drawn in {correct}/{len(images)} images (classifier labels)")


@app.command()
def evaluate(
    per_shape: int = typer.Option(32, help="Images per shape (fixed seeds, paired across shapes)."),
    first_seed: int = typer.Option(1000, help="Seed of each shape's first image."),
    steps: int = typer.Option(20, help="DDIM steps."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Classifier-free guidance scale (the toy model's own: 4)."),
    pipeline: Path = typer.Option(None, help="Pipeline folder (default: the shipped toy model)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the results (JSON) here."),
) -> None:
    """The ground-truth bar: how often the model draws the prompted shape, colour and style."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline

    from evallearn.progress import quiet_library_bars

    quiet_library_bars()  # no "Loading pipeline components" bar

    from . import SHAPES, load_toy_classifier
    from .training.evaluate import evaluate_pipeline

    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(str(_pipeline_folder(pipeline)))
    pipe.set_progress_bar_config(disable=True)
    res = evaluate_pipeline(pipe, load_toy_classifier(), n_per_shape=per_shape, steps=steps, guidance=guidance,
                            first_seed=first_seed)  # fmt: skip
    res.pop("images")
    typer.echo("| prompted | shape | colour | style | " + " | ".join(SHAPES) + " |")
    for shape, row in zip(SHAPES, res["confusion"], strict=True):
        acc = res["per_shape"][shape]
        cells = " | ".join(str(v) for v in row)
        typer.echo(f"| {shape} | {acc['shape']:.2f} | {acc['colour']:.2f} | {acc['style']:.2f} | {cells} |")
    m = res["mean"]
    typer.echo(f"| mean | {m['shape']:.3f} | {m['colour']:.3f} | {m['style']:.3f} |")
    if out is not None:
        out.write_text(json.dumps(res, indent=2) + "\n")


LINE_H = 12  # px per label line in the default PIL font


def cell_labels(shape: str, colour: str, style: str) -> list[str]:
    """The classifier's reading of one image, one full word per line: shape, style, colour."""
    return [shape, style, colour]


def grid_geometry(scale: int) -> tuple[int, int, int, int]:
    """(tile size, column width, label band height, row-name column width) of the ``toy show``
    grid: a column is as wide as its tile or its longest label, whichever is wider, so no label
    is cut or runs into the next column."""
    from PIL import Image, ImageDraw

    from . import COLOURS, SHAPES, STYLES

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(draw.textlength(word) for word in (*SHAPES, *COLOURS, *STYLES))
    cell = 32 * scale
    col_w = max(cell, int(widest) + 6)
    head_w = max(70, int(widest) + 8)
    return cell, col_w, 2 + LINE_H * len(cell_labels("", "", "")) + 2, head_w


def _pipeline_folder(pipeline: Path | None) -> Path:
    """``--pipeline``, or the shipped toy model, resolved as a config's ``model:`` is: a one-line error
    names a folder that is not a pipeline, or says how to get the toy weights when they are missing."""
    from evallearn.models.loading import resolve_model

    from .world import REF as TOY

    return resolve_model(str(pipeline) if pipeline is not None else TOY).path


if __name__ == "__main__":  # pragma: no cover
    app()
