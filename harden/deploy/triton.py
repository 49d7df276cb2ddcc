"""Serving artefacts for an exported ONNX: a Triton Inference Server model repository.

Layout written (Triton's convention): ``<repo>/<name>/config.pbtxt``, ``<repo>/<name>/labels.txt`` and
``<repo>/<name>/<version>/model.onnx``. Shapes come from the ONNX graph (the batch axis becomes ``max_batch_size``),
labels from the ``harden.labels`` metadata harden stamps at export.
"""

from __future__ import annotations

import re
from pathlib import Path

from harden.core.errors import HardenError
from harden.core.io import atomic_write_bytes

_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32", 2: "TYPE_UINT8",
          3: "TYPE_INT8"}


def _io(value, what: str, path: Path) -> tuple[str, str, list[int]]:
    t = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if not dims or dims[0] != -1:
        raise HardenError(f"{path}: the {what} {value.name!r} has no dynamic batch axis (shape {dims}); export it "
                          "with harden (dynamic batch) before serving it with dynamic batching")
    if any(d < 1 for d in dims[1:]):
        raise HardenError(f"{path}: the {what} {value.name!r} has dynamic non-batch dimensions {dims}")
    if t.elem_type not in _TYPES:
        raise HardenError(f"{path}: the {what} {value.name!r} has an element type Triton config cannot name")
    return value.name, _TYPES[t.elem_type], dims[1:]


def triton_repository(onnx_path: Path, repo: Path, name: str, version: int = 1, max_batch_size: int = 64,
                      preferred: tuple[int, ...] = (8, 32), queue_delay_us: int = 1000, instances: int = 1,
                      kind: str = "KIND_CPU") -> Path:
    """Write the repository and return the model folder."""
    import onnx

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise HardenError(f"model name {name!r}: use letters, digits, '_', '-' or '.' (it becomes a folder name)")
    if not onnx_path.is_file():
        raise HardenError(f"{onnx_path}: no such ONNX file")
    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise HardenError(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__})") from None
    inputs = [i for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise HardenError(f"{onnx_path}: expected one input and one output, found {len(inputs)} and "
                          f"{len(proto.graph.output)}")
    iname, itype, idims = _io(inputs[0], "input", onnx_path)
    oname, otype, odims = _io(proto.graph.output[0], "output", onnx_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    labels = meta.get("harden.labels", "").split("\n") if meta.get("harden.labels") else []
    if labels and len(labels) != odims[-1]:
        raise HardenError(f"{onnx_path}: {len(labels)} labels in its metadata but {odims[-1]} outputs")
    folder = repo / name
    label_line = '\n    label_filename: "labels.txt"' if labels else ""
    config = f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{iname}"
    data_type: {itype}
    dims: [ {", ".join(map(str, idims))} ]
  }}
]
output [
  {{
    name: "{oname}"
    data_type: {otype}
    dims: [ {", ".join(map(str, odims))} ]{label_line}
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred if b <= max_batch_size)} ]
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]
'''
    atomic_write_bytes(folder / str(version) / "model.onnx", onnx_path.read_bytes())
    atomic_write_bytes(folder / "config.pbtxt", config.encode())
    if labels:
        atomic_write_bytes(folder / "labels.txt", ("\n".join(labels) + "\n").encode())
    return folder
