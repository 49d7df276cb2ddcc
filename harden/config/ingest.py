"""What a pipeline reads: the model (a folder, a file or a registry URI) and the defender's clean data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import Field, StringConstraints

from harden.core.base import StrictModel


class InputSpec(StrictModel):
    """The input contract, required when model.path is a bare weights file (a model folder carries its own)."""

    size: tuple[int, int, int] = Field(description="C, H, W")
    mean: list[float] = Field(description="per-channel mean subtracted after scaling pixels to [0, 1]")
    std: list[float] = Field(description="per-channel standard deviation divided by after the mean")
    labels: Optional[list[str]] = Field(None, description="class names in output order")
    pixel_scale: float = Field(255.0, description="raw pixel values are divided by this first")


RegistryUri = Annotated[str, StringConstraints(pattern=r"^(models|runs):/\S+$")]


def is_registry_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("models:/", "runs:/"))


class ModelConfig(StrictModel):
    path: Union[RegistryUri, Path] = Field(description="a model folder, a weights file, or an MLflow URI "
                                           "(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run>/<path>) "
                                           "whose artifacts are such a folder")
    architecture: Optional[str] = Field(None, description="a registered name, torchvision/<name>, timm/<name> (or "
                                        "a bare timm name, as a timm hub folder's config.json gives it), or "
                                        "module:function (a Python entry point: needs trust_code). Left out for an "
                                        "ONNX file, the graph itself is converted to torch (onnx2torch) and must "
                                        "reproduce the file's logits")
    trust_code: bool = Field(False, description="allow a module:function architecture to be imported and run; never "
                             "needed for the built-in architectures")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the architecture "
                                       "(e.g. width); a model folder's config.json supplies them")
    num_classes: Optional[int] = Field(None, ge=2, description="outputs of the classifier (default: from the labels)")
    input: Optional[InputSpec] = Field(None, description="the input contract of a bare weights file (a model folder "
                                       "has it in config.json)")
    rename: dict[str, str] = Field(default_factory=dict, description="tensor-name prefixes of the weights file mapped "
                                   "to the architecture's, e.g. {'linear.': 'fc.'} (the longest match wins)")
    name: Optional[str] = Field(None, min_length=1, description="the model's name: the registry entry is "
                                "harden-<name> (default: the model folder's name; for a file, its folder's)")


class DataSource(StrictModel):
    path: Path = Field(description="an npz file (x uint8 NHWC, y int labels) or an ImageFolder directory")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N images after a seeded shuffle")


class CleanData(DataSource):
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="stratified share kept for stopping and checks")
    split_seed: int = Field(0, description="seed of the stratified tune / held-out split")


class DataConfig(StrictModel):
    clean: CleanData
    test: Optional[DataSource] = None
