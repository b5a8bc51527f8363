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
concept". The functions are mounted by ``evallearn.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

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
    toy = model == "toy"
    wc = wace_concept(concept)
    if toy:
        from ..toyworld import toy_concept

        tc = toy_concept(concept)
        concept_cfg = {"name": concept, "kind": tc.kind, "retain": retain or list(tc.retain_concepts)}
        sampler = {"scheduler": "ddim", "steps": 20, "guidance_scale": 6.0, "batch_size": 32}
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
    if technique == "free_run" and base_model is None and not toy:
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


def probe(
    ctx: typer.Context,
    concept: Annotated[str, typer.Option("--concept", help="concept key: airliner, van_gogh, circle (toy), ...")],
    model: Annotated[str, typer.Option("--model", help="erased checkpoint folder / hub id, or 'toy'")],
    probes: Annotated[list[str], typer.Option("--probes", help="probe names (repeat or space-separate)")],
    technique: Annotated[str, typer.Option(help="technique to apply first (free_run = model is erased)")] = "free_run",
    base_model: Annotated[str | None, typer.Option(help="the original model (default SD-1.4)")] = None,
    num_prompts: Annotated[int | None, typer.Option(help="prompts per probe (default: the paper's 30)")] = None,
    retain: Annotated[list[str] | None, typer.Option(
        "--retain", help="concepts the judge may answer instead (repeat or comma-separate); default: the "
                         "paper's other concepts of the same kind; required for other concepts")] = None,
    judge: Annotated[str, typer.Option(
        "--judge", help="how images are scored: auto (forced choice, CLIP ViT-L/14), clip, imagenet "
                        "(the paper's ResNet-50 top-1 of 1,000), imagenet_top5, clip_score (the paper's "
                        "CLIP ViT-B/32 score)")] = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    output_dir: str = "runs",
    seed: int = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="write and validate the config only")] = False,
) -> None:
    """Probe an erased model with the probes of 'When Are Concepts Erased From Diffusion Models?'."""
    from rich.console import Console

    from ..config import parse_config
    from ..runner import prepare

    # ``--probes a b c``: click options take one value, so the words after it arrive as extra args
    names = [n for item in [*probes, *ctx.args] for n in item.replace(",", " ").split()]
    data = build_probe_config(concept, model, names, technique, base_model, num_prompts, device, dtype, output_dir,
                              seed, retain, judge)
    cfg = parse_config(data, "probe")
    plan = prepare(cfg)
    path = Path(output_dir) / f"{data['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = Console()
    out.print(f"config: {path} · spec {plan.spec_hash} · run dir {plan.run_dir}")
    if dry_run:
        return
    from ..cli import results_table
    from ..runner import run

    results = run(cfg, console=Console(stderr=True))
    out.print(results_table(results))
    v = results["probes"]["verdict"]
    out.print(f"verdict: {v['label']} — {v['summary']}", markup=False)


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

    from ..models.loading import load_pipeline, resolve_model
    from .latent_classifier import folder_images, toy_training_images, train_latent_classifier

    info = resolve_model(model)
    pipe = load_pipeline(info, device)
    size = info.default_size
    if positives and negatives:
        pos, neg = folder_images(positives, size), folder_images(negatives, size)
    elif "toy" in info.tags:
        pos, neg = toy_training_images(concept, num_positives, num_negatives)
    else:
        raise UserError("train-latent-classifier: give --positives and --negatives image folders")
    console = Console(stderr=True)
    clf, metrics = train_latent_classifier(
        pipe, pos, neg, epochs=epochs, batch_size=batch_size, lr=lr,
        log=lambda **kw: console.print(f"epoch {kw['epoch']}: val loss {kw['val_loss']:.4f} "
                                       f"ROC-AUC {kw['roc_auc']:.3f}"))
    clf.save(out, {**metrics, "concept": concept, "model": model})
    Console().print(f"saved {out} (best epoch {metrics['best']})")


def mount(app: typer.Typer) -> None:
    """Add ``probe`` and ``train-latent-classifier`` to the ``eval-learn`` app."""
    app.command("probe", context_settings={"allow_extra_args": True})(probe)
    app.command("train-latent-classifier")(train_latent_classifier_command)
