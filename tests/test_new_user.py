"""What a new user trips over: a registry tag measured on someone else's trigger, weights whose names almost fit,
and a registered name nobody chose."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from harden.cli import cli
from harden.config.loading import load_pipeline
from harden.core.errors import ModelLoadError
from harden.ingest.models.loading import load_model
from harden.stages.register import registered_name

from .conftest import SMOKE_YAML, write_model_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("yaml_file", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_name_no_trigger(yaml_file):
    import yaml

    raw = yaml.safe_load(yaml_file.read_text())
    assert not raw.get("stages", {}).get("verify", {}).get("triggers"), \
        f"{yaml_file.name} verifies a trigger the user did not name"


def test_without_a_named_trigger_no_asr_tag_and_the_summary_says_so(tiny_workspace):
    import mlflow

    (tiny_workspace / "pipeline.yaml").write_text(SMOKE_YAML.split("  verify:")[0] + "tracking: {experiment: smoke}\n")
    result = CliRunner().invoke(cli, ["run", str(tiny_workspace / "pipeline.yaml"), "--out",
                                      str(tiny_workspace / "out")])
    assert result.exit_code == 0, result.output
    assert not [ln for ln in result.output.splitlines() if ln.startswith("│ ASR")]
    out = " ".join(result.output.split())
    assert "no known trigger was checked" in out
    assert "repairs that ran" in out and "fine-tune with distillation" in out
    assert "registered" in out and "harden-model version 1" in out
    report = json.loads((tiny_workspace / "out" / "report.json").read_text())
    assert report["checked"] == {"known_triggers": [], "scan": "not run", "repairs": report["checked"]["repairs"]}
    client = mlflow.MlflowClient(tracking_uri=report["mlflow"]["tracking_uri"])
    tags = client.get_model_version("harden-model", "1").tags
    assert not [k for k in tags if k.startswith("asr")]
    assert tags["known_triggers"] == "none" and tags["scan"] == "not run"
    assert tags["repairs"].endswith("fine-tune with distillation")


def test_registered_name_follows_the_folder_or_model_name(tmp_path, tiny_workspace):
    vendor = tmp_path / "vendor-x"
    vendor.mkdir()
    (vendor / "model.onnx").write_bytes(b"")
    base = load_pipeline(tiny_workspace / "pipeline.yaml")
    by_file = base.model_copy(update={"model": base.model.model_copy(update={"path": vendor / "model.onnx"})})
    assert registered_name(by_file) == "harden-vendor-x"
    named = base.model_copy(update={"model": base.model.model_copy(update={"name": "fraud detector v2"})})
    assert registered_name(named) == "harden-fraud-detector-v2"
    assert registered_name(base) == "harden-model"  # the folder `model`


def _renamed_folder(tmp_path, tiny_cnn):
    folder = write_model_folder(tmp_path / "m", tiny_cnn)
    state = {k.replace("head.", "linear.") if k.startswith("head.") else k: v.contiguous()
             for k, v in tiny_cnn.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_weights_that_almost_fit_get_a_proposed_rename_and_the_rename_works(tmp_path, tiny_cnn):
    assert any(k.startswith("head.") for k in tiny_cnn.state_dict()), "tiny_cnn's classifier is head"
    folder = _renamed_folder(tmp_path, tiny_cnn)
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    assert "{'linear.': 'head.'}" in str(err.value) and "model.rename" in str(err.value)
    art = load_model(folder, rename={"linear.": "head."})
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(art.model(x), tiny_cnn(x))


def test_rename_through_the_yaml(tmp_path, tiny_workspace, tiny_cnn):
    folder = _renamed_folder(tiny_workspace, tiny_cnn)
    args = ["run", str(tiny_workspace / "pipeline.yaml"), "--out", str(tiny_workspace / "out"),
            "--set", f"model.path={folder}", "--set", "tracking.enabled=false",
            "--set", "stages.finetune.enabled=false"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "model.rename" in refused.output and "Traceback" not in refused.output
    ok = CliRunner().invoke(cli, [*args, "--set", "model.rename={'linear.': 'head.'}"])
    assert ok.exit_code == 0, ok.output


def test_no_proposal_when_the_shapes_do_not_pair(tmp_path, tiny_cnn):
    folder = write_model_folder(tmp_path / "m", tiny_cnn)
    state = {k: v.contiguous() for k, v in tiny_cnn.state_dict().items() if k != "head.weight"}
    state["classifier.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    assert "rename:" not in str(err.value)
