"""harden command line: run, validate, list. A HardenError prints one clear message and exits non-zero."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from harden import __version__
from harden.config.detect import DETECTORS
from harden.config.loading import load_pipeline, read_yaml_model
from harden.config.prune import SCORERS
from harden.core.errors import HardenError
from harden.core.stage import STAGES, ordered
from harden.deploy.gate import GATE_FAILED
from harden.deploy.triton import triton_repository
from harden.evaluate.triggers import TRIGGERS, build_trigger
from harden.ingest.models.registry import list_architectures
from harden.lineage.registry import inspect, render
from harden.lineage.registry import promote as do_promote
from harden.pipeline import run_pipeline
from harden.report.summary import render_summary
from harden.scoring_preview import preview
from harden.stages import ingest

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
@click.option("--resume", is_flag=True, help="Reuse the stage outputs a crashed or killed run left in --out "
              "(same inputs and settings only) and mark its MLflow runs KILLED.")
@_set_option
def run(pipeline: Path, out: Path | None, overrides: tuple[str, ...], resume: bool) -> None:
    """Run the pipeline in PIPELINE (a YAML file) end to end.

    Exit codes: 0 done (and the gate passed, if enabled); 2 could not run (a mistake in the YAML, the model or the
    data: the message says which); 3 the gate failed (gate.json and gate-junit.xml list the checks)."""
    try:

        cfg = load_pipeline(pipeline, list(overrides))
        out_dir = (out or cfg.out or Path("harden-runs") / cfg.name).resolve()
        result = run_pipeline(cfg, out_dir, pipeline.resolve(), resume=resume)
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
    verdict = result.report.get("gate")
    if verdict is not None:
        failed = [c["message"] for c in verdict["checks"] if not c["passed"]]
        if failed:
            click.secho("gate FAILED (" + result.out_dir.joinpath("gate-junit.xml").as_posix() + "):\n  - "
                        + "\n  - ".join(failed), fg="red", err=True)
            sys.exit(GATE_FAILED)
        click.secho(f"gate passed ({len(verdict['checks'])} checks)", fg="green")


@cli.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@_set_option
def validate(pipeline: Path, overrides: tuple[str, ...]) -> None:
    """Check PIPELINE without running it: keys, types, files, model weights and data shapes."""
    try:

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
    """List registered architectures, detectors, scorers, trigger kinds and stages."""
    from harden.redteam.recipes import ATTACKS  # red-team tools load only here and in `zoo`: harden run never does

    con = Console()
    described = {e.name: e.description for e in STAGES.entries()}
    for title, rows in (
        ("architectures", list_architectures()),
        ("detectors (stages.scan.detectors)", [(e.name, e.description) for e in DETECTORS.entries()]),
        ("scorers", [(e.name, e.description) for e in SCORERS.entries()]),
        ("trigger kinds", [(e.name, e.description) for e in TRIGGERS.entries()]),
        ("attacks (harden zoo train)", [("clean", "no attack")] + [(e.name, e.description) for e in ATTACKS.entries()]),
        ("stages, in order", [(s.name, described[s.name]) for s in ordered()]),
    ):
        t = Table(title=title, title_justify="left")
        t.add_column("name")
        t.add_column("description")
        for name, desc in rows:
            t.add_row(name, desc)
        con.print(t)


@cli.command("score")
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for scores.json and the histograms (default: the YAML's `out`/score).")
@_set_option
def score_cmd(pipeline: Path, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Score every conv channel and show what the prune stage would remove, without pruning anything.

    Runs the pipeline's own stages up to the selection (the scan too, when enabled: its verdict sets the budget and
    the tie-break), so the cut shown is the cut `harden run` makes. Writes scores.json (every method's scores, the
    fused ones, and the selection) and one PNG of per-layer histograms per method."""
    try:

        cfg = load_pipeline(pipeline, list(overrides))
        out_dir = (out or (cfg.out or Path("harden-runs") / cfg.name) / "score").resolve()
        summary = preview(cfg, out_dir)
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(summary)


@cli.command("inspect")
@click.argument("model_uri")
@click.option("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON (for machines).")
def inspect_cmd(model_uri: str, tracking_uri: str | None, as_json: bool) -> None:
    """Show a registered version (models:/NAME/VERSION or models:/NAME@ALIAS): aliases, gate, figures, and its
    lineage back to the source model file and the clean data (sha256s)."""


    try:
        doc = inspect(model_uri, tracking_uri)
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(doc, indent=1) if as_json else render(doc))


@cli.command()
@click.argument("model_uri")
@click.option("--alias", default="production", show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI).")
def promote(model_uri: str, alias: str, tracking_uri: str | None) -> None:
    """Point ALIAS at the version in MODEL_URI; refused unless that version's harden gate passed."""

    try:
        version = do_promote(model_uri, alias, tracking_uri)
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(f"{alias} -> version {version}")


@cli.group("export")
def export_group() -> None:
    """Serving artefacts for an exported ONNX."""


@export_group.command("triton")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@click.option("--out", "repo", type=click.Path(path_type=Path), required=True, help="Model repository folder.")
@click.option("--name", default=None, help="Model name (default: the ONNX file's folder name).")
@click.option("--version", default=1, show_default=True, type=click.IntRange(1))
@click.option("--max-batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1))
@click.option("--gpu", is_flag=True, help="KIND_GPU instances instead of KIND_CPU.")
def export_triton(onnx_path: Path, repo: Path, name: str | None, version: int, max_batch_size: int, instances: int,
                  gpu: bool) -> None:
    """Write a Triton model repository (config.pbtxt with dims and dynamic batching, labels.txt) for ONNX_PATH."""

    try:
        folder = triton_repository(onnx_path, repo, name or onnx_path.resolve().parent.name, version, max_batch_size,
                                   instances=instances, kind="KIND_GPU" if gpu else "KIND_CPU")
    except HardenError as exc:
        _fail(exc)
        return
    click.echo(f"wrote {folder}")


@cli.group()
def zoo() -> None:
    """Red-team zoo: train attacked models in the shared zoo's folder layout (for benchmarks)."""


def _data_default(name: str) -> Path:

    return Path(os.environ.get("HARDEN_DATA", "../shared/data")) / "cifar10" / name


@zoo.command("train")
@click.argument("attack")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New model folder to write.")
@click.option("--arch", default="preact_resnet18", show_default=True, help="Architecture (see `harden list`).")
@click.option("--width", type=int, default=16, show_default=True, help="Base width passed as model_args.width.")
@click.option("--data", "train_path", type=click.Path(path_type=Path), default=None,
              help="Training npz (x uint8 NHWC, y). Default: $HARDEN_DATA/cifar10/train.npz.")
@click.option("--test", "test_path", type=click.Path(path_type=Path), default=None,
              help="Test npz for the final clean accuracy and ASR. Default: $HARDEN_DATA/cifar10/test.npz.")
@click.option("--exclude", type=click.Path(path_type=Path), default=None,
              help="npz whose images are left out of training (e.g. the defender's clean set).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on a seeded subset of this many images.")
@click.option("--params", type=click.Path(path_type=Path), default=None,
              help="YAML with `trigger:` and `poison:` overrides of the attack's recipe.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Trained clean model folder (TrojanNN optimises its patch on it).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--channels-last", is_flag=True, help="NHWC convolutions: faster on CPU at width 16 and more (at very "
              "narrow widths oneDNN's backward can hang).")
def zoo_train(attack: str, out: Path, arch: str, width: int, train_path: Path | None, test_path: Path | None,
              exclude: Path | None, epochs: int, lr: float, batch_size: int, seed: int, limit: int | None,
              params: Path | None, reference: Path | None, device: str, channels_last: bool) -> None:
    """Train a model attacked with ATTACK (or `clean`) and write config.json, model.safetensors, model.onnx,
    attack.json and trigger.npz. Attacks: see `harden list`."""
    try:
        # red-team tools load only here and in `list`: the hardening path never imports harden.redteam
        from harden.redteam.recipes import AttackParams
        from harden.redteam.zoo import ZooJob, train_zoo_model

        job = ZooJob(
            attack=attack, out=out, train_path=train_path or _data_default("train.npz"),
            test_path=test_path or _data_default("test.npz"), arch=arch, width=width, epochs=epochs, lr=lr,
            batch_size=batch_size, seed=seed, limit=limit, exclude=exclude, reference=reference, device=device,
            channels_last=channels_last,
            params=read_yaml_model(params, AttackParams) if params else AttackParams(),
        )
        for what, p in (("--data", job.train_path), ("--test", job.test_path), ("--exclude", exclude),
                        ("--reference", reference)):
            if p is not None and not p.exists():
                raise HardenError(f"{what}: no such file or folder: {p}")
        report = train_zoo_model(job)
    except HardenError as exc:
        _fail(exc)
        return
    asr = "—" if report["asr"] is None else f"{100 * report['asr']:.2f}%"
    click.echo(f"{out}: clean accuracy {100 * report['clean_acc']:.2f}%, ASR {asr}, "
               f"{report['poisoned_images']} poisoned images, {report['train_seconds']} s")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
