"""The red-team benchmark's spec and the attack variants it adds (patch styles, image-wide, reflection, sample-specific
and adaptive triggers, partial stamping with label-keeping cover images)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import redteam
from harden.config.evaluate import EncodedTrigger, FilterTrigger, JpegTrigger, PatchTrigger
from harden.core.errors import ConfigError
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import load_images
from harden.redteam.recipes import AttackParams, resolve
from harden.redteam.zoo import _in_pieces, poisoned_training_set

from .conftest import TINY_CONTRACT, synthetic_images

NEW_FAMILIES = ("sample-specific", "image-wide", "reflection", "adaptive")


def _x(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_spec_covers_what_the_benchmark_promises():
    spec = redteam.load_spec()
    models = spec.models
    assert len(models) >= 24
    for split in redteam.SPLITS:
        half = [m for m in models if m.split == split]
        assert {m.arch for m in half} == {"preact_resnet18", "cifar_resnet18", "cifar_vgg11_bn"}
        assert {m.family for m in half} == {m.family for m in models}, f"every family in {split}"
    clean = Counter(m.arch for m in models if m.attack == "clean")
    assert all(n >= 2 for n in clean.values()) and len(clean) == 3
    families = Counter(m.family for m in models)
    assert all(families[f] >= 2 for f in NEW_FAMILIES)
    backdoored = [m for m in models if m.attack != "clean"]
    targets = {m.params.get("trigger", {}).get("target", 0) for m in backdoored}
    assert len(targets - {0}) >= 5
    ratios = {m.params.get("poison", {}).get("ratio") for m in backdoored}
    assert {0.01, 0.05} <= ratios
    from harden.redteam.recipes import ATTACKS

    assert {m.attack for m in backdoored} <= set(ATTACKS.names())
    assert set(ATTACKS.names()) <= {m.attack for m in backdoored}, "every `harden zoo train` recipe is in the set"


def test_spec_errors_name_the_problem(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("models:\n  - {name: a, split: dev, family: x, arch: y, attack: clean, seed: 1}\n"
                   "  - {name: a, split: test, family: x, arch: y, attack: clean, seed: 2, reference: zz}\n")
    with pytest.raises(SystemExit, match="duplicate model names: a"):
        redteam.load_spec(bad)
    bad.write_text("models:\n  - {name: a, split: tune, family: x, arch: y, attack: clean, seed: 1}\n")
    with pytest.raises(SystemExit, match="split"):
        redteam.load_spec(bad)


def test_references_train_first_and_an_edited_entry_is_stale(tmp_path):
    spec = redteam.load_spec()
    order = redteam.ordered(spec, {m.name for m in spec.models})
    refs = {m.reference for m in spec.models if m.reference}
    first = [m.name for m in order[:len(refs)]]
    assert set(first) == refs
    rest = [m.split for m in order[len(refs):]]
    assert rest == sorted(rest, key=redteam.SPLITS.index)
    m = spec.models[0]
    assert redteam.state(spec, m, tmp_path) == "missing"
    (tmp_path / m.name).mkdir()
    (tmp_path / m.name / "attack.json").write_text("{}")
    (tmp_path / m.name / "redteam.json").write_text(json.dumps(redteam.recipe(spec, m)))
    assert redteam.state(spec, m, tmp_path) == "built"
    (tmp_path / m.name / "redteam.json").write_text(json.dumps({**redteam.recipe(spec, m), "seed": -1}))
    assert redteam.state(spec, m, tmp_path) == "stale"


def test_patch_styles():
    x = _x()
    board = build_trigger(PatchTrigger(target=0, size=4, style="checkerboard", position="top-left", margin=0))(x)
    assert torch.equal(board[0, 0, :2, :2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    a = build_trigger(PatchTrigger(target=0, size=4, style="random", seed=1))(x)
    b = build_trigger(PatchTrigger(target=0, size=4, style="random", seed=2))(x)
    patch = a[0, :, 11:15, 11:15]
    assert len(torch.unique(patch)) > 10 and not torch.equal(a, b)
    assert torch.equal(a[1, :, 11:15, 11:15], patch)  # the same patch on every image


@pytest.mark.parametrize("cfg", [FilterTrigger(target=0, preset="sepia"), JpegTrigger(target=0, quality=10),
                                 EncodedTrigger(target=0, amplitude=8 / 255, seed=3)])
def test_image_wide_triggers_touch_the_whole_image(cfg):
    x = _x(size=32)
    out = build_trigger(cfg)(x)
    changed = ((out - x).abs() > 1e-3).float().mean()
    assert changed > 0.5 and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, build_trigger(cfg)(x))


def test_encoded_residual_is_small_and_sample_specific():
    x = _x(n=2, size=32)
    x[1] = x[1].flip(-1)
    out = build_trigger(EncodedTrigger(target=0, amplitude=8 / 255, seed=0))(x)
    r = out - x
    assert float(r.abs().max()) <= 8 / 255 + 1e-6
    assert float((r[0] - r[1]).abs().mean()) > 0.5 * float(r.abs().mean())  # not one pattern for all images


def test_blend_sources_and_the_old_noise_pattern_is_unchanged(tmp_path):
    _, _, noise = resolve("blended", AttackParams(), tmp_path / "t.npz", 5, (3, 16, 16))
    assert np.array_equal(noise["pattern"], np.random.default_rng(5).random((16, 16, 3)).astype(np.float32))
    for source in ("smooth", "picture"):
        trig, _, arrays = resolve("blended", AttackParams(trigger={"source": source}), tmp_path / "t.npz", 5,
                                  (3, 16, 16))
        p = arrays["pattern"]
        assert p.shape == (16, 16, 3) and p.min() >= 0 and p.max() <= 1
        assert np.abs(np.diff(p, axis=0)).mean() < np.abs(np.diff(noise["pattern"], axis=0)).mean() / 2  # smooth
        assert "source" not in trig.model_dump()
    with pytest.raises(ConfigError, match="trigger.source"):
        resolve("blended", AttackParams(trigger={"source": "kitten"}), tmp_path / "t.npz", 5, (3, 16, 16))


def test_pieces_stamp_part_of_the_trigger_and_cover_images_keep_labels(tmp_path):
    x, y = synthetic_images(200, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    data = load_images(tmp_path / "train.npz", TINY_CONTRACT, "train")
    trig, poison, _ = resolve("badnets", AttackParams(trigger={"size": 14, "margin": 1},
                                                      poison={"pieces": 2, "cover_ratio": 1.0}), None, 0, (3, 16, 16))
    poisoned, stats = poisoned_training_set(data, trig, poison, 4, seed=0)
    changed = np.flatnonzero((poisoned.x != data.x).any(axis=(1, 2, 3)))
    relabelled = np.flatnonzero(poisoned.y != data.y)
    assert stats == {"poisoned_images": 20, "cover_images": 20}
    assert len(changed) == 40 and set(relabelled) < set(changed)
    full = torch.ones(1, 3, 16, 16)
    part = _in_pieces(build_trigger(trig), poison, torch.Generator().manual_seed(0))(torch.zeros(8, 3, 16, 16))
    share = float(part.mean() / build_trigger(trig)(torch.zeros(1, 3, 16, 16)).mean())
    assert 0.2 < share < 0.8 and full.sum() > 0  # about half of the patch, not all of it, on average


def test_train_resumes_and_run_writes_the_tables(tmp_path, monkeypatch):
    """Two tiny models end to end: train builds them (and nothing twice), run hardens them and writes the per-model,
    summary and detection tables with each backdoored model's floor."""
    import benchmarks.run as bench

    data = tmp_path / "data" / "cifar10"
    data.mkdir(parents=True)
    for name, n, seed in (("train", 400, 1), ("test", 120, 2), ("clean", 160, 3)):
        x, y = synthetic_images(n, seed)
        np.savez(data / f"{name}.npz", x=x, y=y)
    monkeypatch.setenv("HARDEN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARDEN_ZOO", str(tmp_path / "no-zoo"))
    monkeypatch.setenv("HARDEN_REDTEAM", str(tmp_path / "cache"))
    spec_file = tmp_path / "redteam.yaml"
    spec_file.write_text(
        "defaults: {width: 8, epochs: 2, lr: 0.05, batch_size: 64}\n"
        "models:\n"
        "  - {name: tiny-clean, split: test, family: clean, arch: tiny_cnn, attack: clean, seed: 1}\n"
        "  - {name: tiny-badnets, split: test, family: patch, arch: tiny_cnn, attack: badnets, seed: 2,\n"
        "     params: {trigger: {target: 2, size: 4}}}\n")
    spec = redteam.load_spec(spec_file)
    root = redteam.cache_dir()
    assert redteam.train(spec, root, jobs=2, threads=1, split=None, rebuild_stale=False, device="cpu") == 0
    assert {redteam.state(spec, m, root) for m in spec.models} == {"built"}
    stamp = (root / "tiny-clean" / "attack.json").stat().st_mtime
    assert redteam.train(spec, root, jobs=1, threads=1, split=None, rebuild_stale=False, device="cpu") == 0
    assert (root / "tiny-clean" / "attack.json").stat().st_mtime == stamp  # nothing retrained

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: tiny\nseed: 0\ndevice: cpu\nmodel: {{path: {root / 'tiny-clean'}}}\n"
        f"data: {{clean: {{path: {data / 'clean.npz'}, heldout_fraction: 0.25}}, "
        f"test: {{path: {data / 'test.npz'}}}}}\n"
        "stages:\n  scan: {enabled: true, detectors: {neural_cleanse: {epochs: 3, steps_per_epoch: 2}}}\n"
        "  score: {methods: {clp: {u: 1.0}}}\n"
        "  finetune: {epochs: 1, batch_size: 32}\n  export: {latency: false}\ntracking: {enabled: false}\n")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    redteam.run(spec, root, pipeline, "test", "redteam-tiny", [], tmp_path / "runs", jobs=1, reactivate=True)
    doc = json.loads((tmp_path / "results" / "redteam-tiny.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["tiny-badnets"]["target"] == 2 and rows["tiny-badnets"]["floor"] is not None
    assert rows["tiny-clean"]["asr_after"] is None and rows["tiny-badnets"]["asr_after"] is not None
    assert doc["summary"]["test"]["backdoored"] == 1 and doc["summary"]["test"]["clean"] == 1
    assert {d["detector"] for d in doc["detection"]} >= {"neural_cleanse", "verdict (any)"}
    table = (tmp_path / "results" / "redteam-tiny.md").read_text()
    assert "tiny-badnets" in table and "false positives" in table
    assert (tmp_path / "results" / "redteam-tiny-bars.png").is_file()
    react = rows["tiny-badnets"]["reactivation"]
    assert set(react) == {"hardened", "clean_baseline"}
    assert set(react["hardened"]) == {"asr", "asr_plain_ft", "asr_poisoned_ft"}
    assert "Re-activation" in table and "reactivation" not in rows["tiny-clean"]
    # the re-activation checks start from the hardened network itself: the same logits as the exported ONNX
    from benchmarks.reactivation import hardened_model
    from harden.evaluate.metrics import onnx_predictor

    run_dir = Path(rows["tiny-badnets"]["run"])
    report = json.loads((run_dir / "report.json").read_text())
    net = hardened_model(root / "tiny-badnets", run_dir)
    assert sum(p.numel() for p in net.parameters()) == report["params"]["after"]
    x = torch.rand(8, 3, 16, 16)
    ours = net(TINY_CONTRACT.normalize(x)).detach().numpy()
    theirs = onnx_predictor(Path(report["onnx"]["path"]), TINY_CONTRACT)(x)
    assert np.abs(ours - np.asarray(theirs)).max() < 1e-4


def test_calibration_reads_thresholds_off_clean_models_and_a_threshold_replaces_the_own_rule(tmp_path):
    """benchmarks/calibrate.py: the statistic of every detector on clean models, a threshold from that null alone,
    and `statistic_threshold` turning it into the detector's verdict."""
    from benchmarks import calibrate
    from harden.detect.neural_cleanse import NeuralCleanseFinding
    from harden.detect.scan import calibrated
    from harden.ingest.models.registry import create_model

    from .conftest import write_model_folder, write_smoke_workspace

    ws = write_smoke_workspace(tmp_path)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("tiny_cnn", 4, {"width": 8}).eval()
        models.append(write_model_folder(tmp_path / f"clean-{seed}", model))
    null = calibrate.null_statistics(ws / "pipeline.yaml", models, tmp_path / "runs", [
        "stages.scan.detectors={neural_cleanse: {epochs: 2, steps_per_epoch: 2}, warp: {steps: 5}}"])
    assert set(null) == {"neural_cleanse", "warp"} and set(null["warp"]) == {"clean-0", "clean-1"}
    assert len(null["warp"]["clean-0"]["classes"]) == 4
    assert null["warp"]["clean-0"]["statistic"] == max(null["warp"]["clean-0"]["classes"])
    cal = calibrate.calibrate(null, fpr=0.05, margin=0.1)
    top = max(v["statistic"] for v in null["warp"].values())
    assert cal["warp"]["threshold"] == pytest.approx(1.1 * top) and "FPR <= ~100%" in cal["warp"]["how"]
    assert calibrate.threshold([float(i) for i in range(40)], 0.05, 0.1)[1].startswith("95% quantile of 40")
    assert "| warp | 2 |" in calibrate.table(cal, "dev")
    nc = NeuralCleanseFinding([10.0, 2.0, 10.0, 9.0], [0.0] * 4, [], np.zeros((4, 16, 16)),
                              np.zeros((4, 3, 16, 16)), None)
    assert nc.statistic() == pytest.approx(4.75) and calibrated(nc, 4.0).target == 1
    assert calibrated(nc, 5.0).target is None and calibrated(nc, None) is nc
