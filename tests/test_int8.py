"""INT8: onnxruntime static quantisation, measured again (accuracy, ASR, agreement, latency) in the pipeline."""

import json

import onnx

from harden.config import load_pipeline
from harden.pipeline import run_pipeline


def test_pipeline_quantises_measures_int8_and_times_both_files(tiny_workspace):
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
        "stages.int8.enabled=true", "stages.int8.calibration_images=64", "stages.finetune.max_steps=2",
        "tracking.enabled=false",
        'stages.verify.triggers={"patch": {"kind": "patch", "target": 0, "size": 3}}'])
    out = tiny_workspace / "out"
    report = run_pipeline(cfg, out).report
    q = report["int8"]
    assert (out / "model.int8.onnx").is_file() and not (out / ".int8-work").exists()
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert 0 <= q["clean_acc"] <= 1 and set(q["asr"]) == {"patch"} and q["top1_agreement_vs_fp32"] > 0.5
    assert set(q["latency_vs_fp32"]) == {"batch_1", "batch_64"}
    assert set(report["latency"]) == {"batch_1", "batch_64"} and (out / "source.onnx").is_file()
    assert all(row["ratio"] > 0 for row in report["latency"].values())
    assert json.loads((out / "report.json").read_text())["int8"]["sha256"] == q["sha256"]
