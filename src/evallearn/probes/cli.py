"""Command-line shortcuts for the probes, with the habits of the paper's runner
(``python runner.py --concept airliner --probes ... --pipeline_path PATH``):

    eval-learn probe --concept airliner --model PATH --probes noise_based classifier_guidance
    eval-learn train-latent-classifier --concept airliner --positives DIR --negatives DIR --out DIR

``probe`` builds the run config for the user (paper defaults: base model SD-1.4, 50 steps, CFG
7.5, the paper's concept kind and neighbours; the toy world's sampler on ``--model toy``), writes
it next to the results and runs it (``--dry-run``: write and validate only). ``PATH`` is an
already-erased checkpoint, scored with ``technique: free_run`` against ``--base-model``; or
``--model toy --technique uce`` erases first. ``--judge`` picks the scoring rule (the default
forced choice, or the paper's ImageNet top-1/top-5 and CLIP score); a concept outside the paper's
13 needs ``--retain`` (the alternatives a forced choice needs) or a rule that can say "not the
concept". ``build_probe_config`` and ``train-latent-classifier`` live here; the ``probe`` command,
which runs the config, is :mod:`evallearn.commands.probe` (it sits above the runner). Both are
``eval-learn`` commands through the ``evallearn.cli`` entry-point group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .prompts import wace_concept, wace_retain

SD14 = "CompVis/stable-diffusion-v1-4"


#: ``--judge``: how probe images are scored -> probe params
JUDGES = {
    "auto": {},  # forced choice among the concept and its alternatives (CLIP ViT-L/14; toy classifier on toy)
    "clip": {"judge": "clip", "scoring": "choice"},
    "imagenet": {"judge": "imagenet", "scoring": "imagenet"},  # the paper's ResNet-50 top-1 over 1,000
    "imagenet_top5": {"judge": "imagenet", "scoring": "imagenet_top5"},
    "clip_score": {"scoring": "clip_score"},  # the paper's CLIP ViT-B/32 score
}


def build_probe_config(concept: str, model: str, probes: list[str], technique: str = "free_run",
                       base_model: str | None = None, num_prompts: int | None = None, device: str = "cpu",
                       dtype: str = "float32", output_dir: str = "runs", seed: int = 0,
                       retain: list[str] | None = None, judge: str = "auto") -> dict:
    """The run config ``eval-learn probe`` runs, as a plain mapping."""
    from .. import registry

    for name in probes:
        registry.probes.get(name)  # unknown names: one-line error listing the known ones
    if num_prompts is not None and num_prompts < 1:
        raise UserError(f"--num-prompts: must be at least 1 (got {num_prompts})")
    if judge not in JUDGES:
        raise UserError(f"--judge: unknown '{judge}'; choose one of {', '.join(JUDGES)}")
    retain = [w for item in (retain or []) for w in (x.strip() for x in item.split(",")) if w]
    from ..concepts.world import world_owning
    from ..config import ConceptConfig

    world = world_owning(model)
    if world.known_concepts() and concept not in world.known_concepts():
        raise UserError(f"--concept {concept}: not a concept of model '{model}'; known: "
                        f"{', '.join(world.known_concepts())}")
    wc = wace_concept(concept)
    if not world.open_vocabulary:  # a closed world's own concept; its model's own guidance
        c = world.resolve_concept(ConceptConfig(name=concept, kind=world.concept_kind(concept) or "object",
                                                retain=tuple(retain)))
        concept_cfg = {"name": concept, "kind": c.kind, "retain": list(c.retain)}
        sampler = {"scheduler": "ddim", "steps": 20, "batch_size": 32}
    else:
        name = wc.word if wc else concept
        kind = wc.kind if wc else "object"
        concept_cfg = {"name": name, "kind": kind, "retain": retain or wace_retain(concept)}
        sampler = {"scheduler": "default", "steps": 50, "guidance_scale": 7.5, "batch_size": 8}
        others = {w.strip().lower() for w in concept_cfg["retain"]} - {name.lower(), concept.lower()}
        if JUDGES[judge].get("scoring", "choice") == "choice" and not others:
            raise UserError(
                f"--concept {concept}: not one of the paper's 13 concepts and no --retain, so the judge would "
                f"choose among '{name}' alone and count every image (noise too) as the concept; pass --retain "
                f"with concepts an image could show instead (e.g. --retain dog,cat,car), or --judge imagenet "
                f"(an ImageNet class) or --judge clip_score")
    if technique == "free_run" and base_model is None and world.open_vocabulary:
        base_model = SD14
    params = {"num_prompts": num_prompts} if num_prompts is not None else {}
    params.update(JUDGES[judge])
    cfg = {
        "name": f"probe-{concept.replace(' ', '_')}",
        "model": model,
        "technique": {"name": technique},
        "concept": concept_cfg,
        "metrics": [],
        "probes": [{"name": p, "params": dict(params)} for p in (["standard_prompt"] + [
            p for p in probes if p != "standard_prompt"])],
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "sampler": sampler,
        "output_dir": output_dir,
    }
    if base_model:
        cfg["base_model"] = base_model
    return cfg


def train_latent_classifier_command(
    concept: Annotated[str, typer.Option("--concept")],
    out: Annotated[Path, typer.Option("--out", help="output folder (config.json + model.safetensors)")],
    model: Annotated[str, typer.Option("--model", help="base model whose VAE encodes the images")] = SD14,
    positives: Annotated[Path | None, typer.Option(help="folder of images of the concept")] = None,
    negatives: Annotated[Path | None, typer.Option(help="folder of images of other classes")] = None,
    epochs: int = 70,
    batch_size: int = 8,
    lr: float = 1e-4,
    num_positives: int = 1300,
    num_negatives: int = 5000,
    device: str = "cpu",
) -> None:
    """Train the latent classifier the classifier-guidance probe steers with."""
    from rich.console import Console

    from ..concepts.world import world_of
    from ..models.loading import load_pipeline, resolve_model
    from .latent_classifier import folder_images, train_latent_classifier

    info = resolve_model(model)
    pipe = load_pipeline(info, device)
    size = info.default_size
    made = None if positives and negatives else world_of(info).concept_images(concept, num_positives, num_negatives)
    if positives and negatives:
        pos, neg = folder_images(positives, size), folder_images(negatives, size)
    elif made is not None:  # a world with a renderer makes its own real images
        pos, neg = made
    else:
        raise UserError("train-latent-classifier: give --positives and --negatives image folders")
    console = Console(stderr=True)
    clf, metrics = train_latent_classifier(
        pipe, pos, neg, epochs=epochs, batch_size=batch_size, lr=lr,
        log=lambda **kw: console.print(f"epoch {kw['epoch']}: val loss {kw['val_loss']:.4f} "
                                       f"ROC-AUC {kw['roc_auc']:.3f}"))
    clf.save(out, {**metrics, "concept": concept, "model": model})
    Console().print(f"saved {out} (best epoch {metrics['best']})")


#: ``eval-learn train-latent-classifier`` (entry point in the ``evallearn.cli`` group)
train_latent_classifier_app = typer.Typer()
train_latent_classifier_app.command("train-latent-classifier")(train_latent_classifier_command)
