"""``eval-learn probe``: probe an erased model with the probes of "When Are Concepts Erased From
Diffusion Models?" (Lu et al., 2025), the way the paper's runner is called.

The run config is built by :func:`evallearn.probes.cli.build_probe_config` (paper defaults, see
there), written next to the results, validated and run (``--dry-run``: write and validate only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml


def probe(
    ctx: typer.Context,
    concept: Annotated[str, typer.Option("--concept", help="concept key: airliner, van_gogh, circle (toy), ...")],
    model: Annotated[str, typer.Option("--model", help="erased checkpoint folder / hub id, or a world's model ref")],
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
    from ..probes.cli import build_probe_config
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
    from ..cli import results_table, run_and_report

    results = run_and_report(cfg, console=Console(stderr=True))
    out.print(results_table(results))
    v = results.probes.verdict
    out.print(f"verdict: {v.label} — {v.summary}", markup=False)


#: the ``probe`` entry point of the ``evallearn.cli`` group: a one-command app
probe_app = typer.Typer()
probe_app.command("probe", context_settings={"allow_extra_args": True})(probe)
