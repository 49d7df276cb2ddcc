"""The pre-deployment gate: checks from report.json, JUnit output, exit code 3, promotion only on a pass."""

import json
from xml.etree import ElementTree as ET

import pytest

from harden.config.deploy import GateConfig
from harden.config.schema import PipelineConfig
from harden.deploy.gate import evaluate, write_results

from .test_cli import _harden, _mlflow_client

REPORT = {"asr": {"badnets": {"before": 0.9, "after": 0.04}, "blended": {"before": 1.0, "after": 0.2}},
          "clean_acc": {"before": 0.83, "after": 0.815}, "onnx": {"max_abs_diff": 3e-6}}


def test_checks_per_trigger_override_and_missing_measurements():
    cfg = GateConfig(enabled=True, max_asr=0.05, max_asr_per_trigger={"blended": 0.25}, max_clean_acc_drop=0.01,
                     max_onnx_diff=1e-4)
    checks = {c.name: c for c in evaluate(cfg, REPORT)}
    assert checks["asr.badnets"].passed and checks["asr.blended"].passed
    assert not checks["clean_acc_drop"].passed and checks["clean_acc_drop"].value == pytest.approx(0.015)
    assert checks["onnx_max_abs_diff"].passed
    missing = evaluate(GateConfig(enabled=True, max_asr_per_trigger={"wanet": 0.05}), {"asr": {}})
    assert [c.passed for c in missing] == [False] and "not measured" in missing[0].message


@pytest.mark.parametrize("after, passed", [(0.8179, True), (0.8178, False)])
def test_a_drop_exactly_at_the_limit_passes(after, passed):
    # 0.8329 - 0.8179 is 0.015000000000000013 in floating point: the zoo Blended model, 150 test images lost of
    # 10,000, failed a 1.5-point limit by that rounding.
    cfg = GateConfig(enabled=True, max_clean_acc_drop=0.015)
    [check] = evaluate(cfg, {"clean_acc": {"before": 0.8329, "after": after}})
    assert check.passed is passed


def test_itasr_check_is_trigger_free_and_needs_a_scan():
    cfg = GateConfig(enabled=True, max_itasr=0.1)
    assert not evaluate(cfg, {})[0].passed
    assert evaluate(cfg, {"scan": {"flagged": False}})[0].passed
    flagged = {"scan": {"flagged": True}, "itasr": {"before": 0.99, "after": 0.3}}
    assert not evaluate(cfg, flagged)[0].passed and "inverted-trigger" in evaluate(cfg, flagged)[0].message


def test_junit_lists_each_check_and_its_failures(tmp_path):
    checks = evaluate(GateConfig(enabled=True, max_asr=0.05, max_clean_acc_drop=0.01), REPORT)
    doc = write_results(checks, tmp_path, "demo")
    assert doc["passed"] is False
    suite = ET.parse(tmp_path / "gate-junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    failing = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failing == {"asr.blended", "clean_acc_drop"}
    assert json.loads((tmp_path / "gate.json").read_text())["checks"][0]["name"] == "asr.badnets"


def test_gate_naming_an_undefined_trigger_is_a_config_error():
    with pytest.raises(ValueError, match="does not define"):
        PipelineConfig.model_validate({"model": {"path": "m"}, "data": {"clean": {"path": "c"}},
                                       "gate": {"enabled": True, "max_asr_per_trigger": {"nope": 0.1}}})


@pytest.mark.parametrize("parity,code,alias", [(1e-12, 3, False), (1e-3, 0, True)])  # float32 ORT is never exact
def test_run_exit_code_and_promotion_follow_the_gate(tiny_workspace, parity, code, alias):
    proc = _harden("run", "pipeline.yaml", "--out", "out", "--set", "gate.enabled=true",
                   "--set", f"gate.max_onnx_diff={parity}", "--set", "gate.max_asr=1.0",
                   "--set", "gate.max_clean_acc_drop=1.0", "--set", "stages.finetune.max_steps=2", cwd=tiny_workspace)
    assert proc.returncode == code, proc.stderr[-2000:]
    suite = ET.parse(tiny_workspace / "out" / "gate-junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == ("0" if alias else "1")
    client = _mlflow_client(tiny_workspace / "out" / "mlflow.db")
    mv = client.get_model_version_by_alias("harden-model", "candidate")
    assert mv.tags["gate"] == ("passed" if alias else "failed")
    aliases = client.get_registered_model("harden-model").aliases
    assert ("production" in aliases) == alias
    if not alias:
        assert "gate FAILED" in proc.stderr and "ONNX parity" in proc.stderr


def test_int8_file_and_latency_face_the_same_limits():
    report = {**REPORT, "int8": {"asr": {"badnets": 0.31, "blended": 0.1}, "clean_acc": 0.81},
              "latency": {"batch_1": {"ratio": 0.8}, "batch_64": {"ratio": 1.2}}}
    cfg = GateConfig(enabled=True, max_asr=0.05, max_asr_per_trigger={"blended": 0.25}, max_clean_acc_drop=0.03,
                     max_latency_ratio=1.0)
    checks = {c.name: c for c in evaluate(cfg, report)}
    assert not checks["int8.asr.badnets"].passed and checks["int8.asr.blended"].passed  # a backdoor back in INT8
    assert checks["int8.clean_acc_drop"].passed
    assert checks["latency_ratio.batch_1"].passed and not checks["latency_ratio.batch_64"].passed
    assert not evaluate(GateConfig(enabled=True, max_latency_ratio=1.0), {})[0].passed


def test_int8_and_latency_checks_need_the_export(tiny_workspace):
    from harden.config.loading import load_pipeline
    from harden.core.errors import ConfigError

    for bad in (["stages.int8.enabled=true"], ["gate.enabled=true", "gate.max_latency_ratio=1.0"]):
        with pytest.raises(ConfigError, match="needs stages.export"):
            load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.export.enabled=false", *bad])


def test_rescan_check_fails_while_a_fresh_scan_still_flags():
    cfg = GateConfig(enabled=True, rescan_clean=True)
    still = {"rescan": {"flagged": True, "target": 0,
                        "detectors": {"neural_cleanse": {"target": 0, "statistic": 10.0}}}}
    gone = {"rescan": {"flagged": False, "target": None,
                       "detectors": {"neural_cleanse": {"target": None, "statistic": 1.4}}}}
    assert not evaluate(cfg, still)[0].passed and "still flags class 0" in evaluate(cfg, still)[0].message
    assert evaluate(cfg, gone)[0].passed
    assert not evaluate(cfg, {})[0].passed


def test_rescan_message_names_every_detector_and_its_statistic():
    cfg = GateConfig(enabled=True, rescan_clean=True)
    still = {"rescan": {"flagged": True, "target": 0, "detectors": {
        "neural_cleanse": {"target": None, "statistic": 1.43}, "grating": {"target": 0, "statistic": 0.70}}}}
    check = evaluate(cfg, still)[0]
    assert not check.passed and "grating flags, statistic 0.70" in check.message
    assert "neural_cleanse clear, statistic 1.43" in check.message
