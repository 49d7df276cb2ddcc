"""Property-based fuzzing: whatever the input, the config loader and the file parsers give a valid object or a
HardenError, never another exception."""

import string

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harden.config.loading import load_pipeline
from harden.core.errors import HardenError
from harden.ingest.data.sources import load_images
from harden.ingest.models.loading import check_safetensors

from .conftest import TINY_CONTRACT

KEYS = ["name", "seed", "device", "model", "data", "stages", "gate", "tracking", "path", "clean", "test", "score",
        "prune", "finetune", "export", "verify", "triggers", "methods", "clp", "u", "select", "policy", "epochs",
        "lr", "kind", "target", "size", "alpha", "enabled", "max_asr", "int8", "scan", "polarize", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=20), st.sampled_from(["patch", "blend", "auto", "clean.npz"]))
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)),
                     max_leaves=25)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(doc=trees)
def test_config_loader_never_raises_anything_but_harden_errors(doc, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "p.yaml").write_text(yaml.safe_dump(doc))
    try:
        load_pipeline(d / "p.yaml")
    except HardenError:
        pass


@SETTINGS
@given(doc=st.dictionaries(st.sampled_from(KEYS), trees, max_size=6), text=st.text(max_size=200))
def test_config_loader_on_half_valid_pipelines_and_raw_text(doc, text, tiny_workspace):
    base = yaml.safe_load((tiny_workspace / "pipeline.yaml").read_text())
    base["stages"] = {**base["stages"], **{k: v for k, v in doc.items()}}
    (tiny_workspace / "f.yaml").write_text(yaml.safe_dump(base))
    (tiny_workspace / "raw.yaml").write_text(text)
    for name in ("f.yaml", "raw.yaml"):
        try:
            load_pipeline(tiny_workspace / name)
        except HardenError:
            pass


@SETTINGS
@given(head=st.binary(max_size=64), body=st.binary(max_size=256),
       header=st.dictionaries(st.text(max_size=8), st.dictionaries(
           st.sampled_from(["dtype", "shape", "data_offsets"]),
           st.one_of(st.sampled_from(["F32", "I8", "??"]), st.lists(st.integers(-5, 300), max_size=4))), max_size=3))
def test_safetensors_header_check_refuses_cleanly(head, body, header, tmp_path_factory):
    import json
    import struct

    d = tmp_path_factory.mktemp("st")
    for i, blob in enumerate((head + body, struct.pack("<Q", len(json.dumps(header))) + json.dumps(header).encode()
                              + body)):
        p = d / f"{i}.safetensors"
        p.write_bytes(blob)
        try:
            check_safetensors(p)
        except HardenError:
            pass


@SETTINGS
@given(blob=st.binary(max_size=512),
       shape=st.lists(st.integers(0, 20), min_size=1, max_size=5),
       dtype=st.sampled_from([np.uint8, np.float32, np.int64]),
       labels=st.lists(st.integers(-3, 12), max_size=20))
def test_npz_loader_refuses_cleanly(blob, shape, dtype, labels, tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    (d / "raw.npz").write_bytes(blob)
    np.savez(d / "shaped.npz", x=np.zeros(shape, dtype), y=np.array(labels))
    for name in ("raw.npz", "shaped.npz"):
        try:
            load_images(d / name, TINY_CONTRACT, "data.clean")
        except HardenError:
            pass
