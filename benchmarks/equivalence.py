"""Does a refactor change what harden computes? Run every shipped pipeline on two tiny models and compare figures.

    python benchmarks/equivalence.py record OLD.json [WORKDIR]    # on the commit before the change
    python benchmarks/equivalence.py record NEW.json [WORKDIR]    # after it
    python benchmarks/equivalence.py compare OUT.json NEW.json
    python benchmarks/equivalence.py runs OLD_RUN_DIR NEW_RUN_DIR      # two `harden run --out` folders of real models

Two tiny_cnn models trained here on synthetic 16x16 images (one with a planted 3-pixel patch backdoor, one clean), each
hardened by every YAML in pipelines/ with small epoch counts (`--set`), so every stage and repair runs in minutes.
The record holds each report.json without what legitimately varies (timings, paths, run ids) and the sha256 of the
exported ONNX graph. `compare` lists every figure that differs; exit 1 when any does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harden.config.evaluate import PatchTrigger  # noqa: E402
from harden.config.loading import load_pipeline  # noqa: E402
from harden.core.artifacts import InputContract  # noqa: E402
from harden.core.train import TrainSettings, train  # noqa: E402
from harden.ingest.data.sources import ImageSet  # noqa: E402
from harden.ingest.models.registry import create_model  # noqa: E402
from harden.pipeline import run_pipeline  # noqa: E402
from harden.redteam.recipes import PoisonConfig  # noqa: E402
from harden.redteam.zoo import poisoned_training_set  # noqa: E402

CONTRACT = InputContract((3, 16, 16), (0.5,) * 3, (0.25,) * 3, ("a", "b", "c", "d"))
VOLATILE = {"seconds", "path", "mlflow", "latency", "latency_vs_fp32", "config", "resumed_from_cache", "out_dir",
            "harden_version", "sha256"}  # sha256: the pipeline hash covers paths, ONNX files carry it
SMALL_SCAN = {"neural_cleanse": ["epochs=4", "steps_per_epoch=2"], "warp": ["steps=10"],
              "grating": ["directions=6", "images=40"]}
SMALL = ["device=cpu", "stages.finetune.epochs=2", "stages.finetune.batch_size=32",
         "stages.polarize.epochs=2", "stages.export.latency_batches=[1]", "tracking.enabled=false"]


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class brightens its own quadrant and colour channel (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 110, size=(n, 16, 16, 3))
    for i, c in enumerate(y):
        x[i, (c // 2) * 8:(c // 2 + 1) * 8, (c % 2) * 8:(c % 2 + 1) * 8, c % 3] += 120
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def tiny_model(folder: Path, backdoored: bool) -> Path:
    data = ImageSet(*images(800, 7), "train", "0")
    if backdoored:
        data, _ = poisoned_training_set(data, PatchTrigger(target=0, size=3, value=1.0), PoisonConfig(ratio=0.15), 4,
                                        seed=0)
    torch.manual_seed(0)
    settings = TrainSettings(epochs=12, lr=0.05, batch_size=64, patience=99, freeze_bn=False, clip_grad_norm=None,
                             max_regression=1.0)
    model = train(create_model("tiny_cnn", 4, {"width": 8}), data, CONTRACT, settings, lambda m: 0.0,
                  torch.device("cpu")).model.eval()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "tiny_cnn", "model_args": {"width": 8}, "num_classes": 4, "label_names": list("abcd"),
        "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}}))
    return folder


def stable(node):
    if isinstance(node, dict):
        return {k: stable(v) for k, v in node.items() if k not in VOLATILE}
    if isinstance(node, list):
        return [stable(v) for v in node]
    return node


def record(out: Path, ws: Path) -> None:
    figures = {}
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    for name, n, seed in (("clean", 240, 1), ("test", 200, 2)):
        np.savez(ws / f"{name}.npz", *(), **dict(zip(("x", "y"), images(n, seed))))
    models = {"backdoored": tiny_model(ws / "backdoored", True), "clean": tiny_model(ws / "clean", False)}
    for yaml in sorted((REPO / "pipelines").glob("*.yaml")):
        for label, folder in models.items():
            sets = SMALL + [f"model.path={folder}", f"data.clean.path={ws / 'clean.npz'}",
                            f"data.test.path={ws / 'test.npz'}",
                            "stages.verify.triggers.patch={kind: patch, target: 0, size: 3, value: 1.0}"]
            cfg = load_pipeline(yaml, sets + small_scan(yaml, sets))
            result = run_pipeline(cfg, ws / "runs" / f"{yaml.stem}-{label}")
            graph = graph_sha256(Path(result.report["onnx"]["path"])) if "onnx" in result.report else None
            figures[f"{yaml.stem}/{label}"] = {"report": stable(result.report), "onnx_graph_sha256": graph}
            print(f"{yaml.stem}/{label}: onnx graph {graph and graph[:12]}", flush=True)
    out.write_text(json.dumps(figures, indent=1, sort_keys=True))


def small_scan(yaml: Path, sets: list[str]) -> list[str]:
    """Small settings for the detectors the YAML runs (naming a detector's setting would turn that detector on)."""
    scan = load_pipeline(yaml, sets).stages.scan
    return [f"stages.scan.detectors.{name}.{kv}" for name, _ in scan.configured() for kv in SMALL_SCAN.get(name, [])
            ] if scan.enabled else []


def graph_sha256(path: Path) -> str:
    """The ONNX file's graph (every node and weight), without its metadata: the pipeline hash stamped there covers
    the run's paths, which differ between two records."""
    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString()).hexdigest()


def run_figures(run: Path) -> dict:
    """One run folder's report without what legitimately varies, and its ONNX graph's sha256."""
    report = json.loads((run / "report.json").read_text())
    onnx_path = run / "model.onnx"
    return {"report": stable(report), "onnx_graph_sha256": graph_sha256(onnx_path) if onnx_path.is_file() else None}


def differences(a, b, key: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in (
            differences(a[k], b[k], f"{key}.{k}") if k in a and k in b else
            [f"{key}.{k}: only in {'old' if k in a else 'new'}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{key}[{i}]")]
    return [] if a == b else [f"{key}: {a!r} -> {b!r}"]


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "record":
        record(Path(argv[1]), Path(argv[2] if len(argv) == 3 else "/tmp/harden-equivalence"))
        return 0
    if len(argv) == 3 and argv[0] in ("compare", "runs"):
        load = run_figures if argv[0] == "runs" else (lambda p: json.loads(p.read_text()))
        diffs = differences(load(Path(argv[1])), load(Path(argv[2])))
        print("\n".join(diffs) or "same figures and ONNX files")
        return 1 if diffs else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
