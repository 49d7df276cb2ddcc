"""docs/pipeline.md, generated from the pipeline schema so the reference cannot drift from the code.

    python -m harden.config.docs > docs/pipeline.md     (tests/test_schema_docs.py checks the file is current)
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from harden.config.schema import PipelineConfig

HEADER = """# Pipeline file reference

Every key of a pipeline YAML, generated from harden's schema (`python -m harden.config.docs > docs/pipeline.md`;
a test fails when this file is out of date). Unknown keys are errors. Any key can be overridden on the command line
with `--set key.path=value` (YAML values: `--set 'stages.verify.triggers.mine={kind: patch, target: 3}'`).
Trigger kinds for `stages.verify.triggers` are listed in [attacks.md](attacks.md).

| key | type | default | what it does |
|---|---|---|---|
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds directly (X, Optional[X]); containers of models are not expanded."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = re.sub(r"Annotated\[str, StringConstraints\(.*?\)\]", "str", text)  # a URI pattern: its field says so
    text = re.sub(r"Annotated\[Union\[[^\]]*\], FieldInfo\([^)]*discriminator='kind'[^)]*\)\]", "trigger", text)
    text = re.sub(r"\b[\w.]+\.(\w+)", r"\1", text)  # module paths off class names
    return text.replace("NoneType", "null").replace("|", "\\|")


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(see below)"
        if isinstance(value, BaseModel):
            return "(see below)"
        return f"`{json.dumps(value, default=str)}`"
    if field.default is PydanticUndefined:
        return "**required**"
    if isinstance(field.default, BaseModel):
        return "(see below)"
    return f"`{json.dumps(field.default, default=str)}`"


# What a field of a common name means wherever it has no description of its own.
GLOSSARY = {"enabled": "whether this part runs", "seed": "seeds this part's random draws", "batch_size": "images per "
            "batch", "lr": "learning rate", "epochs": "most epochs", "momentum": "SGD momentum", "weight_decay":
            "SGD weight decay", "patience": "epochs without improvement before stopping", "augment": "random crop "
            "and flip of training images"}


def _description(name: str, field) -> str:
    if field.description:
        return field.description
    for model in _models_in(field.annotation):  # a section: its class docstring's first line
        if model.__doc__ and not model.__doc__.startswith(model.__name__ + "("):
            return model.__doc__.strip().splitlines()[0]
    return "(section)" if _models_in(field.annotation) else GLOSSARY.get(name, "")


def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        desc = _description(name, field).replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _models_in(field.annotation):
            out += rows(sub, f"{key}.")
    return out


def render() -> str:
    return HEADER + "\n".join(rows(PipelineConfig)) + "\n"


if __name__ == "__main__":
    print(render(), end="")
