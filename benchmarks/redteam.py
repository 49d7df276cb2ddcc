"""The red-team benchmark: models harden was never tuned on, declared in benchmarks/redteam.yaml.

    python benchmarks/redteam.py train [--jobs 2] [--split dev]   # build the missing models (resumable)
    python benchmarks/redteam.py status                            # what is built, stale or missing
    python benchmarks/redteam.py run pipelines/recommended.yaml --split test [--set seed=1] [--jobs 2]

`train` runs `harden zoo train` once per missing model, in a subprocess with its own log, into $HARDEN_REDTEAM
(default ~/.cache/harden/redteam), outside git. A model folder appears only when its training finished (zoo train
writes `<name>.partial` and renames it), so an interrupted `train` goes on with the models still missing. Each folder
gets `redteam.json`, the YAML entry it was built from: an entry edited since is reported stale and rebuilt only with
--rebuild-stale. Order: models others need as a reference first, then dev, then test.

`run` hardens every built model of a split with a pipeline (each model's own trigger named for verify, from its
attack.json, for the report only), and writes benchmarks/results/<name>.{json,md} and <name>-bars.png: a row per
model with its floor (its trigger's ASR on the clean model of the same architecture), means per split, and a
detection table per detector (true positives, right targets, false positives on clean models).
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "benchmarks" / "redteam.yaml"
SPLITS = ("dev", "test")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(Strict):
    width: int = 16
    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 128


class Entry(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    split: Literal["dev", "test"]
    family: str
    arch: str
    attack: str
    seed: int
    params: dict[str, Any] = Field(default_factory=dict)
    reference: str | None = None


class Spec(Strict):
    defaults: Defaults = Defaults()
    models: list[Entry]

    @model_validator(mode="after")
    def _names(self):
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        for m in self.models:
            if m.reference is not None and m.reference not in names:
                raise ValueError(f"{m.name}: reference {m.reference!r} is not a model of this file")
        return self

    def entry(self, name: str) -> Entry:
        return next(m for m in self.models if m.name == name)


def load_spec(path: Path = SPEC) -> Spec:
    try:
        return Spec.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        sys.exit(f"redteam: cannot read {path}: {exc}")
    except ValidationError as exc:
        sys.exit(f"redteam: {path} is not a valid red-team spec:\n{exc}")


def cache_dir() -> Path:
    return Path(os.environ.get("HARDEN_REDTEAM", Path.home() / ".cache" / "harden" / "redteam"))


def data_dir() -> Path:
    return Path(os.environ.get("HARDEN_DATA", REPO.parent / "shared" / "data"))


def defender_path() -> Path:
    return Path(os.environ.get("HARDEN_ZOO", REPO.parent / "shared" / "zoo")) / "defender.npz"


def recipe(spec: Spec, m: Entry) -> dict[str, Any]:
    """What the model folder is built from: the entry with the defaults filled in (stored as redteam.json)."""
    return {**spec.defaults.model_dump(), **m.model_dump()}


def state(spec: Spec, m: Entry, root: Path) -> str:
    folder = root / m.name
    if not (folder / "attack.json").is_file():
        return "missing"
    stamp = folder / "redteam.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != recipe(spec, m):
        return "stale"
    return "built"


def ordered(spec: Spec, names: set[str]) -> list[Entry]:
    """References first (they gate other models), then dev before test, in file order."""
    refs = {m.reference for m in spec.models if m.reference}
    return sorted((m for m in spec.models if m.name in names),
                  key=lambda m: (m.name not in refs, SPLITS.index(m.split)))


def command(spec: Spec, m: Entry, root: Path, device: str, params_file: Path | None) -> list[str]:
    d = spec.defaults
    cmd = [sys.executable, "-m", "harden.cli", "zoo", "train", m.attack, "--out", str(root / m.name),
           "--arch", m.arch, "--width", str(d.width), "--epochs", str(d.epochs), "--lr", str(d.lr),
           "--batch-size", str(d.batch_size), "--seed", str(m.seed), "--device", device,
           "--data", str(data_dir() / "cifar10" / "train.npz"), "--test", str(data_dir() / "cifar10" / "test.npz")]
    if device == "cpu" and d.width >= 16:  # NHWC is faster there; oneDNN was seen to hang at widths of 2-4
        cmd += ["--channels-last"]
    if defender_path().is_file():
        cmd += ["--exclude", str(defender_path())]
    if params_file is not None:
        cmd += ["--params", str(params_file)]
    if m.reference:
        cmd += ["--reference", str(root / m.reference)]
    return cmd


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train(spec: Spec, root: Path, jobs: int, threads: int, split: str | None, rebuild_stale: bool,
          device: str) -> int:
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    lock = open(root / ".train.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"redteam: another `train` is running on {root}; let it finish (it builds everything missing)")
        return 1
    todo: set[str] = set()
    for m in spec.models:
        s = state(spec, m, root)
        if s == "stale" and rebuild_stale:
            shutil.rmtree(root / m.name)
            s = "missing"
        if s == "missing" and (split is None or m.split == split):
            todo.add(m.name)
        elif s == "stale":
            print(f"  {m.name}: stale (built from another entry); --rebuild-stale rebuilds it", flush=True)
    # a reference another model needs is built even when it lies outside --split
    todo |= {spec.entry(n).reference for n in list(todo) if spec.entry(n).reference
             and state(spec, spec.entry(spec.entry(n).reference), root) == "missing"}
    queue = ordered(spec, todo)
    print(f"redteam: {len(queue)} model(s) to train into {root} ({jobs} job(s), {threads} thread(s) each)", flush=True)
    # the trainings import a copy of harden made now: editing the checkout while they run cannot change them
    code = root / ".code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(REPO / "harden", code / "harden", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(code) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    failed: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="redteam-params-"))
    device = pick_device(device)
    while queue or running:
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode == 0:
                (root / name / "redteam.json").write_text(json.dumps(recipe(spec, spec.entry(name)), indent=1))
                print(f"  done {name} in {time.time() - t0:.0f} s: {_tail(root / 'logs' / f'{name}.log')}", flush=True)
            else:
                failed.append(name)
                print(f"  FAILED {name} (exit {proc.returncode}); see {root / 'logs' / f'{name}.log'}", flush=True)
        ready = [m for m in queue if not m.reference or (root / m.reference / "attack.json").is_file()]
        blocked = [m for m in queue if m.reference in failed]
        for m in blocked:
            queue.remove(m)
            failed.append(m.name)
            print(f"  skip {m.name}: its reference {m.reference} failed", flush=True)
        while ready and len(running) < jobs:
            m = ready.pop(0)
            queue.remove(m)
            params_file = None
            if m.params:
                params_file = tmp / f"{m.name}.yaml"
                params_file.write_text(yaml.safe_dump(m.params))
            log = open(root / "logs" / f"{m.name}.log", "w")
            proc = subprocess.Popen(command(spec, m, root, device, params_file), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=code)
            running[m.name] = (proc, time.time(), log)
            print(f"  start {m.name} ({m.split}, {m.attack} on {m.arch})", flush=True)
        if running or queue:
            time.sleep(5)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"redteam: {'all built' if not failed else 'failed: ' + ', '.join(failed)}", flush=True)
    return 1 if failed else 0


def _tail(log: Path) -> str:
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def status(spec: Spec, root: Path) -> None:
    print(f"| model | split | family | attack | arch | state | clean acc | ASR | seconds |\n|{'---|' * 9}")
    for m in spec.models:
        s = state(spec, m, root)
        acc = asr = secs = "—"
        if s != "missing":
            a = json.loads((root / m.name / "attack.json").read_text())
            acc = f"{100 * a['clean_acc']:.2f}"
            asr = "—" if a.get("asr") is None else f"{100 * a['asr']:.2f}"
            secs = str(a.get("train_seconds", "—"))
        print(f"| {m.name} | {m.split} | {m.family} | {m.attack} | {m.arch} | {s} | {acc} | {asr} | {secs} |")


def _harden_one(args: tuple[Path, Path, Path, list[str]]) -> dict[str, Any]:
    """One model through the pipeline (a worker process: one thread, so two jobs share two cores fairly)."""
    import torch

    torch.set_num_threads(1)
    from benchmarks.run import run_one

    pipeline, folder, runs, overrides = args
    return run_one(pipeline, folder, runs, overrides)


def clean_twin(spec: Spec, root: Path, m: Entry) -> Entry | None:
    """The built clean model of ``m``'s architecture, the one in the same split when there is one."""
    twins = sorted((c for c in spec.models if c.attack == "clean" and c.arch == m.arch
                    and state(spec, c, root) == "built"), key=lambda c: c.split != m.split)
    return twins[0] if twins else None


def reactivation(spec: Spec, root: Path, m: Entry, run_dir: Path) -> dict[str, Any]:
    """Both re-activation checks of one hardened model and its clean twin (cached in the run folder)."""
    from benchmarks import reactivation as react

    cached = run_dir / "reactivation.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    twin = clean_twin(spec, root, m)
    result = react.for_run(run_dir, root / m.name, None if twin is None else root / twin.name)
    cached.write_text(json.dumps(result, indent=1))
    return result


def floors(spec: Spec, root: Path, models: list[Entry], runs: Path) -> dict[str, float]:
    """Each backdoored model's floor: the ASR of its trigger on the clean model of the same architecture (the one in
    the same split when there is one). Cached in RUNS/floors.json; ground truth, report only."""
    import torch

    from harden.evaluate.metrics import attack_metrics, torch_predictor
    from harden.evaluate.triggers import build_trigger
    from harden.ingest.data.sources import load_images
    from harden.ingest.models.loading import load_model
    from harden.redteam.groundtruth import read_attack, trigger_from_attack

    cache_file = runs / "floors.json"
    known = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    loaded: dict[str, Any] = {}
    for m in models:
        if m.attack == "clean" or m.name in known:
            continue
        twin = clean_twin(spec, root, m)
        if twin is None:
            continue
        if twin.name not in loaded:
            art = load_model(root / twin.name)
            loaded[twin.name] = (art, load_images(data_dir() / "cifar10" / "test.npz", art.contract, "test set"))
        art, test = loaded[twin.name]
        trig = trigger_from_attack(root / m.name, read_attack(root / m.name) or {})
        known[m.name], _ = attack_metrics(torch_predictor(art.model, art.contract, torch.device("cpu")), test,
                                          build_trigger(trig), trig, art.contract.num_classes,
                                          label=f"floor {m.name} on {twin.name}")
        cache_file.write_text(json.dumps(known, indent=1))
    return known


def run(spec: Spec, root: Path, pipeline: Path, split: str | None, name: str, overrides: list[str], runs: Path,
        jobs: int, reactivate: bool = False, only: list[str] | None = None) -> None:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from benchmarks import redteam_tables as tables
    from benchmarks.run import publish
    from harden.evaluate.checked import scan_verdict
    from harden.redteam.groundtruth import read_attack

    chosen = [m for m in spec.models if split in (None, m.split)
              and (not only or any(fnmatch.fnmatchcase(m.name, pat) for pat in only))]
    if not chosen:
        sys.exit(f"redteam: no model of split {split or 'any'} matches --only {','.join(only or [])}")
    built = [m for m in chosen if state(spec, m, root) == "built"]
    for m in chosen:
        if m not in built:
            print(f"  {m.name}: {state(spec, m, root)}; not run (python benchmarks/redteam.py train)", flush=True)
    if not built:
        sys.exit(f"redteam: no built model of split {split or 'any'} under {root}")
    runs.mkdir(parents=True, exist_ok=True)
    work = [(pipeline.resolve(), root / m.name, runs, overrides) for m in built]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(_harden_one, work))
    else:
        rows = [_harden_one(w) for w in work]
    floor = floors(spec, root, built, runs)
    for m, r in zip(built, rows):
        report = json.loads((Path(r["run"]) / "report.json").read_text())
        r.update(split=m.split, family=m.family, arch=m.arch, target=(read_attack(root / m.name) or {}).get("target"),
                 scan=report.get("scan"), verdict=scan_verdict(report), floor=floor.get(m.name))
        if reactivate and m.attack != "clean":
            r["reactivation"] = reactivation(spec, root, m, Path(r["run"]))
    by_split = {s: tables.summary([r for r in rows if r["split"] == s]) for s in SPLITS
                if any(r["split"] == s for r in rows)}
    det = tables.detection(rows)
    intro = (f"Pipeline `{pipeline}`" + (f" with {', '.join(f'`{o}`' for o in overrides)}" if overrides else "")
             + f"; red-team models ({split or 'both splits'}); ASR and accuracy on the CIFAR-10 "
             "test set, after = the exported ONNX in onnxruntime.")
    parts = [intro, tables.summary_table(by_split), tables.model_table(rows)]
    if det:
        parts += ["Detection (per detector; the verdict is what the pipeline acted on):", tables.detection_table(det)]
    if any("reactivation" in r for r in rows):
        parts += ["Re-activation (one epoch on the tune split, plain and with 50 poisoned images; the clean model of "
                  "the same architecture under the same fine-tunes is the baseline):", tables.reactivation_table(rows)]
    text = "\n\n".join(p.rstrip("\n") for p in parts) + "\n"
    publish(name, {"pipeline": str(pipeline), "overrides": overrides, "split": split, "summary": by_split,
                   "detection": det, "rows": rows}, text, readme=False)
    _bars(rows, name)


def _bars(rows: list[dict[str, Any]], name: str) -> None:
    from benchmarks.run import RESULTS, bar_chart

    bar_chart(rows, RESULTS / f"{name}-bars.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=SPEC)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="build the missing models")
    t.add_argument("--jobs", type=int, default=1, help="trainings at once")
    t.add_argument("--threads", type=int, default=None, help="threads per training (default: cores / jobs)")
    t.add_argument("--split", choices=SPLITS, default=None, help="only this split (and the references it needs)")
    t.add_argument("--rebuild-stale", action="store_true", help="delete and retrain models built from an old entry")
    t.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    sub.add_parser("status", help="a table of the models: built, stale or missing, with their figures")
    r = sub.add_parser("run", help="harden the built models with PIPELINE and write benchmarks/results/redteam-*")
    r.add_argument("pipeline", type=Path)
    r.add_argument("--split", choices=SPLITS, default=None, help="only this split (default: both)")
    r.add_argument("--name", default=None, help="results name (default: redteam-<pipeline>-<split>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value for every run")
    r.add_argument("--runs", type=Path, default=REPO / "runs" / "redteam", help="run folders (resumable cache)")
    r.add_argument("--jobs", type=int, default=1, help="models hardened at once (one thread each)")
    r.add_argument("--reactivation", action="store_true", help="also the two re-activation checks per backdoored model")
    r.add_argument("--only", action="append", default=None, metavar="NAMES",
                   help="only these models: names or globs, comma-separated or repeated (screening a subset)")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    if args.cmd == "run":
        sys.path.insert(0, str(REPO))
        name = args.name or f"redteam-{args.pipeline.stem}-{args.split or 'all'}"
        run(spec, cache_dir(), args.pipeline, args.split, name, args.overrides, args.runs / name, args.jobs,
            args.reactivation, [p for arg in args.only or [] for p in arg.split(",") if p])
        return
    if args.cmd == "train":
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        sys.exit(train(spec, cache_dir(), args.jobs, threads, args.split, args.rebuild_stale, args.device))
    status(spec, cache_dir())


if __name__ == "__main__":
    main()
