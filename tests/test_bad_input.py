"""The bad-input catalogue: every case goes through the real CLI (in-process), must exit 2 with one message that
names the problem (no traceback), and must leave nothing half-written in the output folder."""

import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from harden.cli import cli

from .conftest import synthetic_images


def _yaml(ws, text):
    (ws / "pipeline.yaml").write_text(text)


def _append_stage(ws, line):
    text = (ws / "pipeline.yaml").read_text().replace("stages:\n", "stages:\n" + line + "\n", 1)
    _yaml(ws, text)


def _npz(ws, name, x, y):
    np.savez(ws / name, x=x, y=y)


def _safetensors_with_header(ws, header: bytes, body: bytes = b""):
    (ws / "model" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + body)


def _oversized_header(ws):
    (ws / "model" / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")


def _offsets_outside(ws):
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [8, 3, 3, 3], "data_offsets": [0, 864]}}).encode()
    _safetensors_with_header(ws, header, b"\0" * 16)


def _nan_weights(ws):
    from safetensors.torch import load_file, save_file

    state = load_file(ws / "model" / "model.safetensors")
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, ws / "model" / "model.safetensors")


def _other_arch_width(ws):
    cfg = json.loads((ws / "model" / "config.json").read_text())
    cfg["model_args"] = {"width": 16}
    (ws / "model" / "config.json").write_text(json.dumps(cfg))


def _config_json(ws, mutate):
    cfg = json.loads((ws / "model" / "config.json").read_text())
    mutate(cfg)
    (ws / "model" / "config.json").write_text(json.dumps(cfg))


def _pickle_bomb(ws):
    import pickle

    class Boom:
        def __reduce__(self):
            return (open, (str(ws / "PWNED"), "w"))

    (ws / "model" / "model.safetensors").unlink()
    (ws / "model" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Boom()}))


def _data(name, fn):
    def setup(ws):
        x, y = synthetic_images(200, seed=1)
        x, y = fn(x, y)
        _npz(ws, name, x, y)
    return setup


CASES = {
    # pipeline YAML
    "unknown top-level key": (lambda ws: _yaml(ws, (ws / "pipeline.yaml").read_text() + "colour: red\n"), [], "colour"),
    "misspelt stage": (lambda ws: _append_stage(ws, "  finetun: {epochs: 1}"), [], "finetun"),
    "misspelt nested key": (None, ["stages.finetune.epoch=3"], "stages.finetune.epoch"),
    "wrong type": (None, ["stages.finetune.epochs=ten"], "stages.finetune.epochs"),
    "negative learning rate": (None, ["stages.finetune.lr=-1"], "stages.finetune.lr"),
    "unknown scorer": (None, ["stages.score.methods.magic={}"], "magic"),
    "unknown select policy": (None, ["stages.prune.select.policy=guess"], "stages.prune.select.policy"),
    "bad --set syntax": (None, ["stages.finetune.epochs"], "must look like key.path=value"),
    "YAML syntax error": (lambda ws: _yaml(ws, "name: [unclosed\n"), [], "YAML"),
    "YAML not a mapping": (lambda ws: _yaml(ws, "- a\n- b\n"), [], "mapping"),
    "unset variable": (lambda ws: _yaml(ws, (ws / "pipeline.yaml").read_text().replace(
        "path: model", "path: ${HARDEN_NOT_SET_ANYWHERE}")), [], "HARDEN_NOT_SET_ANYWHERE"),
    "missing model": (None, ["model.path=nowhere"], "model.path"),
    "missing clean data": (None, ["data.clean.path=nowhere.npz"], "data.clean.path"),
    "gate names undefined trigger": (None, ["gate.enabled=true", "gate.max_asr_per_trigger={wanet: 0.1}"], "wanet"),
    "int8 without export": (None, ["stages.int8.enabled=true", "stages.export.enabled=false"], "stages.export"),
    "trigger value out of range": (None, ['stages.verify.triggers={"p": {"kind": "patch", "target": 0, "value": 2}}'],
                                   "value"),
    "trigger of unknown kind": (None, ['stages.verify.triggers={"p": {"kind": "laser", "target": 0}}'], "laser"),
    "blend alpha above 1": (None, ['stages.verify.triggers={"b": {"kind": "blend", "target": 0, "alpha": 1.5}}'],
                            "alpha"),
    "heldout fraction of 1": (None, ["data.clean.heldout_fraction=1.0"], "heldout_fraction"),
    # the model
    "code-carrying pickle": (_pickle_bomb, [], "refused"),
    "oversized safetensors header": (_oversized_header, [], "header claims"),
    "safetensors header not JSON": (lambda ws: _safetensors_with_header(ws, b"{not json"), [], "not valid JSON"),
    "tensor bytes outside the file": (_offsets_outside, [], "byte range"),
    "NaN weights": (_nan_weights, [], "NaN or Inf"),
    "weights of another width": (_other_arch_width, [], "shape mismatches"),
    "unknown architecture": (lambda ws: _config_json(ws, lambda c: c.update(architecture="resnet9000")), [],
                             "resnet9000"),
    "config.json not JSON": (lambda ws: (ws / "model" / "config.json").write_text("{oops"), [], "not valid JSON"),
    "config.json without pretrained_cfg": (lambda ws: _config_json(ws, lambda c: c.pop("pretrained_cfg")), [],
                                           "pretrained_cfg"),
    "folder without weights": (lambda ws: (ws / "model" / "model.safetensors").unlink(), [], "no weights file"),
    # the data
    "images of the wrong size": (_data("clean.npz", lambda x, y: (np.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0))), y)),
                                 [], "16x16x3"),
    "images with one channel": (_data("clean.npz", lambda x, y: (x[..., :1], y)), [], "16x16x3"),
    "labels outside the classes": (_data("clean.npz", lambda x, y: (x, y + 3)), [], "4 classes"),
    "clean set missing a class": (_data("clean.npz", lambda x, y: (x[y != 2], y[y != 2])), [], "no images of class"),
    "empty clean set": (_data("clean.npz", lambda x, y: (x[:0], y[:0])), [], "no images"),
    "float images": (_data("clean.npz", lambda x, y: (x.astype(np.float32), y)), [], "uint8"),
    "unreadable clean data": (lambda ws: (ws / "clean.npz").write_bytes(b"garbage"), [], "cannot read"),
    "clean data without labels": (lambda ws: np.savez(ws / "clean.npz", x=np.zeros((4, 16, 16, 3), np.uint8)), [],
                                  "'y'"),
    "test set of the wrong size": (_data("test.npz", lambda x, y: (x[:, :8, :8], y)), [], "data.test"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message_and_nothing_half_written(name, tiny_workspace):
    setup, overrides, fragment = CASES[name]
    if setup is not None:
        setup(tiny_workspace)
    args = ["run", str(tiny_workspace / "pipeline.yaml"), "--out", str(tiny_workspace / "out"),
            "--set", "tracking.enabled=false"]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(cli, args)
    out = result.output
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{out}\n{result.exception!r}"
    assert fragment in out, f"{name}: {fragment!r} not in:\n{out}"
    assert "Traceback" not in out
    assert not (tiny_workspace / "PWNED").exists()  # the pickle never ran
    left = list((tiny_workspace / "out").rglob("*")) if (tiny_workspace / "out").exists() else []
    assert not [p for p in left if p.name in ("report.json", "model.onnx", "hardened.safetensors")
                or p.name.startswith(".")], f"{name}: left {left}"


def test_catalogue_has_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_full_disk_is_a_clear_error_and_leaves_no_temp_file(tiny_workspace, monkeypatch):
    import errno
    import os

    from harden.lineage import tracker as lineage

    real = os.fsync

    def full(fd):
        real(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lineage.os, "fsync", full)
    args = ["run", str(tiny_workspace / "pipeline.yaml"), "--out", str(tiny_workspace / "out"),
            "--set", "tracking.enabled=false"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "No space left on device" in result.output and "Traceback" not in result.output
    assert not [p for p in (tiny_workspace / "out").rglob(".*")]


def test_unreachable_tracking_server_is_a_clear_error(tiny_workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    args = ["run", str(tiny_workspace / "pipeline.yaml"), "--out", str(tiny_workspace / "out"),
            "--set", "tracking.uri=http://127.0.0.1:9"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "127.0.0.1:9" in result.output and "Traceback" not in result.output
