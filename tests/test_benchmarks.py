"""The benchmark's arithmetic and README splicing (the runs themselves are benchmarks, not tests)."""

import pytest

from benchmarks.run import configure, current_digest, der, markdown, merge, splice_readme


def test_der_is_backdoorbench_formula_on_means():
    assert der(0.9, 0.0) == pytest.approx(0.95)
    assert der(0.9, 0.02) == pytest.approx(0.94)
    assert der(-0.1, -0.01) == pytest.approx(0.5)  # ASR up / accuracy up count as zero, not as credit or penalty
    assert der(0.0, 0.05) == pytest.approx(0.475)


def _row(pipeline, model, acc_b, acc_a, asr_b=None, asr_a=None):
    return {"pipeline": pipeline, "model": model, "clean_acc_before": acc_b, "clean_acc_after": acc_a,
            "asr_before": asr_b, "asr_after": asr_a, "robust_acc_after": None,
            "der": None if asr_b is None else der(asr_b - asr_a, acc_b - acc_a),
            "params_before": 100, "params_after": 80, "macs_before": 10, "macs_after": 9,
            "seconds": {"total": 12.0}}


def test_markdown_table_and_means():
    md = markdown([_row("p", "bad", 0.8, 0.79, 0.9, 0.05), _row("p", "clean", 0.8, 0.795)])
    assert "| p | bad | 80.00 → 79.00 | 90.00 → 5.00 |" in md
    assert "| p | 5.00 | 0.75 | 0.50 | 92.0 |" in md  # mean ASR, drop over all, drop on clean, DER
    assert "Floors" not in md
    assert "badnets 1.20" in markdown([_row("p", "bad", 0.8, 0.79, 0.9, 0.05)], {"badnets": 0.012})
    assert "INT8" not in md


def test_int8_rows_get_their_own_table():
    row = {**_row("g", "bad", 0.8, 0.79, 0.9, 0.05), "int8": {
        "clean_acc": 0.785, "asr": 0.06, "top1_agreement": 0.99, "latency_ratio_vs_fp32": {"batch_1": 0.5,
                                                                                         "batch_64": 0.4}}}
    md = markdown([row])
    assert "| g | bad | 79.00 → 78.50 | 5.00 → 6.00 | 99.00 | 0.50 / 0.40 |" in md


def test_gate_verdicts_get_their_own_table():
    rows = [{**_row("g", "bad", 0.8, 0.79, 0.9, 0.05), "gate": {"passed": True, "failed": []}},
            {**_row("g", "sig", 0.8, 0.8, 0.9, 0.7), "gate": {"passed": False, "failed": ["ASR 0.7 > 0.05"]}}]
    md = markdown(rows)
    assert "| g | bad | passed | — |" in md and "| g | sig | failed | ASR 0.7 > 0.05 |" in md
    assert "Gate" not in markdown([_row("g", "bad", 0.8, 0.79, 0.9, 0.05)])


def test_splice_replaces_only_the_named_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:zoo -->\nold\n<!-- /bench:zoo -->\nb\n")
    assert splice_readme(readme, "zoo", "| new |\n")
    assert readme.read_text() == "a\n<!-- bench:zoo -->\n| new |\n<!-- /bench:zoo -->\nb\n"
    assert not splice_readme(readme, "other", "x")


def test_merge_keeps_rows_not_rerun_and_marks_old_hashes_stale():
    old = [{**_row("anp", "bad", 0.8, 0.7, 0.9, 0.8), "pipeline_sha256": "aaa"},
           {**_row("anp", "blend", 0.8, 0.8, 1.0, 1.0), "pipeline_sha256": "bbb"},
           _row("anp", "sig", 0.8, 0.8, 0.9, 0.9)]  # an older results file: no hash recorded
    new = [{**_row("anp", "sig", 0.8, 0.79, 0.9, 0.1), "pipeline_sha256": "ccc"}]
    rows = merge(old, new, lambda r: r.get("pipeline_sha256") == "aaa")
    assert [(r["model"], r.get("stale", False)) for r in rows] == [("bad", False), ("blend", True), ("sig", False)]
    assert rows[2]["asr_after"] == 0.1  # the fresh row replaces the old one for the same pipeline and model
    assert "| anp † | blend |" in markdown(rows) and "| anp | bad |" in markdown(rows)


def test_a_kept_row_is_current_only_with_todays_pipeline_hash(tiny_workspace):
    pipe = tiny_workspace / "pipeline.yaml"
    today = configure(pipe, tiny_workspace / "model", [])[0].digest()
    check = current_digest([pipe], tiny_workspace, [])
    assert check({"pipeline": "pipeline", "model": "model", "pipeline_sha256": today})
    assert not check({"pipeline": "pipeline (onnx)", "model": "model", "pipeline_sha256": today})  # no model.onnx
    assert not check({"pipeline": "pipeline", "model": "model", "pipeline_sha256": "0" * 64})
    assert not check({"pipeline": "pipeline", "model": "model"})  # hash not recorded
    assert not check({"pipeline": "other", "model": "model", "pipeline_sha256": today})
