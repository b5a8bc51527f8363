"""The ``eval-learn`` command line: thin — parse, call the API, print.

User errors (:class:`evallearn.errors.UserError`) print one line per problem and exit 2, as do
command-line usage errors and a full, read-only or missing output location. Ctrl-C exits 130
with a line saying that what was written is kept and a rerun resumes.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
import typer.main
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__, registry
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark concept unlearning in text-to-image diffusion models.")
out = Console()
err = Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set sampler.steps=10")]


def _quiet() -> None:
    from .progress import quiet_library_bars

    quiet_library_bars()
    warnings.filterwarnings("ignore", message=".*requires torchvision.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _version(value: bool) -> None:
    if value:
        out.print(f"eval-learn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = False) -> None:
    _quiet()


def results_table(results) -> Table:
    """The console table of a :class:`evallearn.results.RunResults`."""
    from .report.table import results_table as table

    return table(results)


def run_and_report(cfg, console=None):
    """Run a parsed config (:func:`evallearn.runner.run`), writing results.json and then
    report.html into the run folder; returns the :class:`evallearn.results.RunResults`."""
    from .report.html import write_report
    from .runner import run as run_config

    return run_config(cfg, console=console or err, report=write_report)


ShardOpt = Annotated[str | None, typer.Option("--shard", metavar="I/N", help=(
    "Make only shard I of N of the run's images and score nothing; once all N are in, run again "
    "without --shard to score them (docs/ray.md)"))]
ShardsOpt = Annotated[int | None, typer.Option("--shards", metavar="N", help=(
    "Run as N shards on Ray tasks side by side, then score them (docs/ray.md)"))]
AddressOpt = Annotated[str | None, typer.Option("--address", help=(
    "Ray cluster address for --shards (default: $RAY_ADDRESS, else a local cluster)"))]


@app.command()
def run(config: Path, set_: SetOpt = None, shard: ShardOpt = None, shards: ShardsOpt = None,
        address: AddressOpt = None) -> None:
    """Run CONFIG: apply the technique, generate, judge, score; write results.json and report.html."""
    from .config import load_config
    from .report.table import nonfinite_lines, summary, unscored

    if shard is not None and shards is not None:
        raise UserError("--shard and --shards: give one (--shard I/N runs one shard here; --shards N all on Ray)")
    if address is not None and shards is None:
        raise UserError("--address: only with --shards (runs on Ray)")
    if shard is not None:
        from .suite.shard import parse_shard, run_shard

        part = parse_shard(shard)
        done = run_shard(load_config(config, set_ or []), part, console=err)
        out.print(f"shard {part}: {done['after']} images and {done['base']} base-model images made · "
                  f"{done['missing']} of the run's images still missing · {done['run_dir']}", soft_wrap=True)
        out.print(f"once all {part.count} shards are in: eval-learn run {config} (without --shard) scores them",
                  soft_wrap=True)
        return
    if shards is not None:
        from .results import load_results
        from .suite.executor import get_executor

        cfg = load_config(config, set_ or [])
        if shards < 1:
            raise UserError(f"--shards {shards}: give at least 1")
        _, outcome = get_executor("ray", address).run_sharded(cfg, shards)
        if outcome.status == "failed":
            _say(f"error: scoring the shards failed: {outcome.error}")
            raise typer.Exit(1)
        results = load_results(Path(outcome.run_dir) / "results.json", "run")
    else:
        results = run_and_report(load_config(config, set_ or []))
    out.print(summary(results))
    if results.probes is not None:
        out.print(f"verdict: {results.probes.verdict.label} — {results.probes.verdict.summary}")
    out.print(f"results: {Path(results.run.dir) / 'results.json'}")
    out.print(f"report:  {Path(results.run.dir) / 'report.html'}")
    if unscored(results):
        raise UserError(f"no value for {', '.join(unscored(results))}: every image was non-finite (NaN/inf); "
                        "check the sampler settings (e.g. sampler.eta, guidance_scale)")
    if nonfinite_lines(results):
        err.print("warning: some images were non-finite and were left out of the scores (see above)",
                  markup=False, highlight=False)


@app.command()
def validate(config: Path, set_: SetOpt = None) -> None:
    """Check CONFIG (keys, parameters, compatibility, device, sizes) without loading, building or
    downloading any weights."""
    from .config import load_config
    from .models.loading import no_fetch
    from .progress import working
    from .runner import prepare

    with no_fetch(), working(f"validate {config}"):
        plan = prepare(load_config(config, set_ or []))
    if plan.model.built:
        out.print(f"ok: spec {plan.spec_hash} · {len(plan.requests)} images · {plan.run_dir}", soft_wrap=True)
    else:
        out.print(f"ok: {len(plan.requests)} images · spec and run folder known once model '{plan.model.ref}' "
                  f"is built (the first run builds it in {plan.model.path.parent})", soft_wrap=True)


def _check_results(path: Path) -> None:
    """A one-line error naming ``path`` when it is not a results.json this version can read
    (malformed, an older shape it cannot migrate, or a newer results schema)."""
    from .results import load_results

    load_results(path, "compare")


@app.command()
def compare(paths: Annotated[list[Path], typer.Argument(help="results.json files or folders holding them")]) -> None:
    """A leaderboard of several runs: each metric's value after erasure (Δ to the base model)."""
    from .report.compare import duplicates, find_results, load_rows, migrated, render

    for path in find_results(paths):
        _check_results(path)
    rows, metric_keys = load_rows(paths)
    for line in migrated(rows) + duplicates(rows):
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    for part in render(rows, metric_keys):
        out.print(part, soft_wrap=isinstance(part, Text))


def _listing(kind: str) -> None:
    from .report.listing import listing

    out.print(listing(kind), soft_wrap=True)


@app.command()
def techniques() -> None:
    """List techniques with their parameters."""
    _listing("technique")


@app.command()
def metrics() -> None:
    """List metrics with their parameters."""
    _listing("metric")


@app.command()
def probes() -> None:
    """List probes with their parameters."""
    _listing("probe")


@app.command()
def judges() -> None:
    """List judges with their parameters."""
    _listing("judge")


@app.command()
def models() -> None:
    """Which models each technique works on, and which models each metric and judge loads."""
    t = Table(title="techniques: base models")
    for col in ("technique", "model tags supported", "concept kinds"):
        t.add_column(col)
    for name, cls in registry.techniques.items():
        s = cls.supports
        t.add_row(name, ", ".join(sorted(s.model_tags)) if s.model_tags else "any diffusers T2I model "
                  "(set `model:`)", ", ".join(sorted(s.concept_kinds)) if s.concept_kinds else "any")
    out.print(t)
    t = Table(title="metrics and judges: models loaded")
    t.add_column("component")
    t.add_column("models (defaults)")
    for kind in ("metric", "judge"):
        for name, cls in registry.ALL[kind].items():
            t.add_row(f"{kind} {name}", ", ".join(cls.models_used()) or "none")
    out.print(t)


def _command_from(name: str, obj: object) -> click.Command:
    """The click command for an entry of the ``evallearn.cli`` group: a ``typer.Typer`` (a group,
    or its single command when it has one command and no callback) or a plain function."""
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_command(obj)
        # shell completion belongs to the root command only
        cmd.params = [p for p in cmd.params if p.name not in ("install_completion", "show_completion")]
        if isinstance(cmd, click.Group) and not cmd.help:
            cmd.help = "Sub-commands: " + ", ".join(cmd.commands) + "."
    elif callable(obj):
        one = typer.Typer()
        one.command(name)(obj)
        cmd = typer.main.get_command(one)
    else:
        raise UserError(f"command '{name}': the entry point gives a {type(obj).__name__}, "
                        f"not a typer.Typer or a function")
    cmd.name = name
    return cmd


def _unavailable(name: str, reason: str) -> click.Command:
    """A stand-in for a command whose module failed to load: listed with the reason, and running
    it is a one-line error instead of the command silently missing."""

    def fail() -> None:
        raise UserError(f"command '{name}' is unavailable: {reason}")

    return click.Command(name, callback=fail, help=f"unavailable: {reason}",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})


class _Commands(typer.core.TyperGroup):
    """The built-in commands plus those of the ``evallearn.cli`` entry-point group, each loaded
    only when it is called (or listed by ``--help``), so ``--version`` or ``compare`` import no
    command module they do not use."""

    _cache: dict[str, click.Command] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return own + [n for n in registry.commands.names() if n not in own]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in registry.commands:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in self._cache:
            if cmd_name in self.commands:
                ep = registry.commands.entry_point(cmd_name)
                cmd = _unavailable(cmd_name, f"the entry point {ep.value if ep else ''} clashes with the "
                                             f"built-in command")
            else:
                try:
                    cmd = _command_from(cmd_name, registry.commands.get(cmd_name))
                except UserError as exc:
                    cmd = _unavailable(cmd_name, str(exc))
                except Exception as exc:  # a broken import under the command: say so, do not drop it
                    ep = registry.commands.entry_point(cmd_name)
                    where = f"cannot load {ep.value}" if ep is not None else "cannot load it"
                    cmd = _unavailable(cmd_name, f"{where} ({type(exc).__name__}: {exc})")
            self._cache[cmd_name] = cmd
        return self._cache[cmd_name]


app.info.cls = _Commands


INTERRUPTED = ("interrupted: everything written so far is kept (images, cached edits, finished results); "
               "run the same command again to resume")

#: OS errors that are about the user's disk or paths, not a bug: one line, exit 2
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST}


def _say(line: str) -> None:
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    try:
        code = app(standalone_mode=False, prog_name="eval-learn")
    except UserError as exc:
        for line in str(exc).splitlines() or [""]:
            _say(f"error: {line}")
        sys.exit(UserError.exit_code)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        hint = "; free some space and run again: what was finished is kept" if exc.errno in (
            errno.ENOSPC, errno.EDQUOT) else ""
        _say(f"error: {where}{exc.strerror or os.strerror(exc.errno)}{hint}")
        sys.exit(2)
    except Exception as exc:
        if _is_usage_error(exc):  # an unknown option, a missing argument, a bad value
            message = exc.format_message()
            if message:  # (none when the help was shown for a bare command)
                _say(f"error: {message}{_help_hint(exc)}")
            sys.exit(2)
        raise
    if code == 130:  # typer turns Ctrl-C into exit code 130
        _say(INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


def _help_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see `{ctx.command_path} --help`)" if ctx is not None else ""


def _is_usage_error(exc: Exception) -> bool:
    """Click's own exceptions, or the copies typer >= 0.20 vendors (they derive from
    ``typer.TyperException``, not from ``click.ClickException``)."""
    kinds: list[type] = []
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds)) and hasattr(exc, "show")


if __name__ == "__main__":
    main()
