"""harden command line: run, validate, list. A HardenError prints one clear message and exits non-zero."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import HardenError

EXIT_USER_ERROR = 2


def _fail(exc: HardenError) -> None:
    click.secho(f"harden: error: {exc}", fg="red", err=True)
    sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="harden")
def cli() -> None:
    """Find and remove backdoors from a third-party image classifier, verify it, and export optimised ONNX."""


_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a YAML value, e.g. --set model.path=../zoo/m --set stages.finetune.epochs=2 (repeatable).",
)


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: the YAML's `out`, else ./harden-runs/<name>).")
@_set_option
def run(pipeline: Path, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Run the pipeline in PIPELINE (a YAML file) end to end."""
    try:
        from .config import load_pipeline
        from .pipeline import render_summary, run_pipeline

        cfg = load_pipeline(pipeline, list(overrides))
        out_dir = (out or cfg.out or Path("harden-runs") / cfg.name).resolve()
        result = run_pipeline(cfg, out_dir, pipeline.resolve())
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(render_summary(result.report))
    click.echo(f"report: {result.out_dir / 'report.json'}")
    if "onnx" in result.report:
        click.echo(f"onnx:   {result.report['onnx']['path']}")
    mf = result.report.get("mlflow", {})
    if mf.get("model_version"):
        click.echo(f"mlflow: run {mf['run_id']}, model {mf['model_name']} v{mf['model_version']} ({mf['tracking_uri']})")


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@_set_option
def validate(pipeline: Path, overrides: tuple[str, ...]) -> None:
    """Check PIPELINE without running it: keys, types, files, model weights and data shapes."""
    try:
        from .config import load_pipeline
        from .stages import ingest
        from .attacks import build_trigger

        cfg = load_pipeline(pipeline, list(overrides))
        inp = ingest.run(cfg)
        for tcfg in cfg.stages.verify.triggers.values():
            build_trigger(tcfg)(inp.heldout.batch01(slice(0, 2)))
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(f"{pipeline}: OK ({inp.model.architecture}, {len(inp.tune)} tune / {len(inp.heldout)} held-out images"
               + (f", {len(inp.test)} test images)" if inp.test is not None else ")"))


@cli.command("list")
def list_cmd() -> None:
    """List registered architectures, scorers, trigger kinds and stages."""
    from rich.console import Console
    from rich.table import Table

    from .attacks import TRIGGERS
    from .models import list_architectures
    from .scorers import SCORERS

    con = Console()
    for title, rows in (
        ("architectures", list_architectures()),
        ("scorers", [(e.name, e.description) for e in SCORERS.entries()]),
        ("trigger kinds", [(e.name, e.description) for e in TRIGGERS.entries()]),
        ("stages", STAGES),
    ):
        t = Table(title=title, title_justify="left")
        t.add_column("name")
        t.add_column("description")
        for name, desc in rows:
            t.add_row(name, desc)
        con.print(t)


STAGES = [
    ("ingest", "load the model safely (safetensors / weights-only) and the data; split clean data tune/held-out"),
    ("score", "score every conv channel for backdoor suspicion with the configured scorer"),
    ("prune", "physically remove flagged channels with torch-pruning; round widths; zero coupled branches"),
    ("finetune", "SGD + cosine on the tune split, early stopping on the held-out split"),
    ("export", "ONNX (dynamo, legacy fallback), checker, onnxslim, metadata, onnxruntime parity"),
    ("verify", "clean accuracy and ASR of the named triggers, before and after (on the ONNX when exported)"),
]


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
