"""INT8: onnxruntime static quantisation, measured again (accuracy, ASR, agreement, latency) in the pipeline."""

import json

import onnx
import pytest

from harden.config.loading import load_pipeline
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
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    first = next(n for n in graph.node if n.op_type == "Conv" and n.input[0] == graph.input[0].name)
    head = next(n for n in graph.node if graph.output[0].name in n.output)
    assert head.op_type == "Gemm" and producer.get(head.input[1]) != "DequantizeLinear"  # fp32 ends (fp32_ends)
    assert producer.get(first.input[1]) != "DequantizeLinear"
    assert any(n.op_type == "Conv" and producer.get(n.input[1]) == "DequantizeLinear" for n in graph.node)
    assert 0 <= q["clean_acc"] <= 1 and set(q["asr"]) == {"patch"} and q["top1_agreement_vs_fp32"] > 0.5
    assert set(q["latency_vs_fp32"]) == {"batch_1", "batch_64"}
    assert set(report["latency"]) == {"batch_1", "batch_64"} and (out / "source.onnx").is_file()
    for row in report["latency"].values():  # fastest runs make the ratio; medians come along for the reader
        assert row["ratio"] == pytest.approx(row["hardened_ms"] / row["source_ms"])
        assert row["hardened_median_ms"] >= row["hardened_ms"] > 0
    assert json.loads((out / "report.json").read_text())["int8"]["sha256"] == q["sha256"]
