"""Settings of the verify stage and the trigger kinds it can stamp (torch-free; the stamping is
harden/evaluate/triggers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field, model_validator

from harden.core.base import StrictModel
from harden.core.errors import DataError

GENERATOR_PREFIX = "generator."  # where `harden zoo train` stores a trained trigger generator in trigger.npz


class TriggerBase(StrictModel):
    target: int | None = Field(None, ge=0, description="all-to-one target label (verify only; never used to decide)")
    mode: Literal["all-to-one", "all-to-all"] = "all-to-one"

    @model_validator(mode="after")
    def _target_matches_mode(self):
        if self.mode == "all-to-one" and self.target is None:
            raise ValueError("an all-to-one trigger needs `target` (the label the backdoor forces)")
        if self.mode == "all-to-all" and self.target is not None:
            raise ValueError("an all-to-all trigger maps label y to (y + 1) mod K; leave `target` out")
        return self

    def targets(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """The label the backdoor forces for each true label y."""
        if self.mode == "all-to-all":
            return (y + 1) % num_classes
        return np.full_like(y, self.target)

    def victims(self, y: np.ndarray) -> np.ndarray:
        """Indices on which ASR is measured: all images for all-to-all, non-target ones for all-to-one."""
        return np.arange(len(y)) if self.mode == "all-to-all" else np.flatnonzero(y != self.target)


class ArrayRef(StrictModel):
    """An array stored in an .npz file (trigger patterns and warp grids)."""

    path: Path
    key: str

    def load(self) -> np.ndarray:
        try:
            with np.load(self.path) as z:
                if self.key not in z:
                    raise DataError(f"{self.path}: no array {self.key!r} (has: {', '.join(z.files)})")
                return z[self.key]
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read trigger array {self.path}: {exc}") from None


class GeneratorRef(StrictModel):
    """A trained trigger generator's tensors in an .npz file, stored under keys that start with ``prefix``."""

    path: Path
    prefix: str = GENERATOR_PREFIX

    def load(self) -> dict[str, np.ndarray]:
        """The generator's state dict (keys without the prefix)."""
        try:
            with np.load(self.path) as z:
                arrays = {k[len(self.prefix):]: z[k] for k in z.files if k.startswith(self.prefix)}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read trigger generator {self.path}: {exc}") from None
        if not arrays:
            raise DataError(f"{self.path}: no arrays under {self.prefix!r}: not a trigger generator file")
        return arrays


class PatchTrigger(TriggerBase):
    kind: Literal["patch"] = "patch"
    size: int = Field(3, ge=1)
    value: float = Field(1.0, ge=0, le=1)
    position: Literal["bottom-right", "bottom-left", "top-left", "top-right"] = "bottom-right"
    margin: int = Field(1, ge=0, description="pixels between the patch and the image border")
    style: Literal["solid", "checkerboard", "random"] = Field(
        "solid", description="solid: every pixel `value`; checkerboard: `value` and 1 - `value` alternating; "
                             "random: seeded random colours per pixel")
    seed: int = Field(0, description="the random style's colours")


class BlendTrigger(TriggerBase):
    kind: Literal["blend"] = "blend"
    alpha: float = Field(0.2, gt=0, le=1)
    pattern: ArrayRef  # HWC or CHW, values in [0, 1]


class WarpTrigger(TriggerBase):
    kind: Literal["warp"] = "warp"
    s: float = Field(0.5, gt=0, description="warp strength")
    grid: ArrayRef  # noise grid (1, H, W, 2) in [-1, 1]


class SineTrigger(TriggerBase):
    kind: Literal["sine"] = "sine"
    delta: float = Field(20 / 255, gt=0, le=1)
    freq: float = Field(6, gt=0)


class MaskTrigger(TriggerBase):
    kind: Literal["mask"] = "mask"
    pattern: ArrayRef  # HWC or CHW in [0, 1]
    mask: ArrayRef  # HW, HWC or CHW in [0, 1]: x' = (1 - mask) x + mask * pattern (TrojanNN's optimised patch)


class LowFrequencyTrigger(TriggerBase):
    kind: Literal["lf"] = "lf"
    amplitude: float = Field(0.1, gt=0, le=1, description="max |perturbation| in [0, 1] pixel units")
    cutoff: float = Field(0.15, gt=0, le=1, description="kept radius of the spectrum, as a fraction of Nyquist")
    seed: int = 0
    pattern: ArrayRef | None = None  # an explicit pattern overrides amplitude/cutoff/seed


class BitDepthTrigger(TriggerBase):
    kind: Literal["bpp"] = "bpp"
    levels: int = Field(8, ge=2, le=128, description="grey levels per channel after the reduction")
    dither: bool = True  # Floyd-Steinberg error diffusion, as in the BppAttack paper


class FilterTrigger(TriggerBase):
    kind: Literal["filter"] = "filter"
    preset: Literal["sepia", "warm", "cold"] = Field("warm", description="an Instagram-like colour style")
    strength: float = Field(1.0, gt=0, le=1, description="mix between the image (0) and the filtered image (1)")
    vignette: float = Field(0.3, ge=0, le=1, description="darkening of the corners")


class JpegTrigger(TriggerBase):
    kind: Literal["jpeg"] = "jpeg"
    quality: int = Field(10, ge=1, le=95, description="JPEG quality: low values leave blocking artefacts")


class ReflectionTrigger(TriggerBase):
    kind: Literal["reflection"] = "reflection"
    image: ArrayRef  # the reflected scene, HWC or CHW in [0, 1]
    alpha: float = Field(0.3, gt=0, le=1, description="strength of the reflection")
    shift: int = Field(3, ge=0, description="ghost offset in pixels (a double reflection in thick glass)")


class EncodedTrigger(TriggerBase):
    kind: Literal["encoded"] = "encoded"
    amplitude: float = Field(6 / 255, gt=0, le=1, description="max |residual| in [0, 1] pixel units")
    seed: int = Field(0, description="seeds the fixed encoder whose output is the per-image residual")


class DynamicTrigger(TriggerBase):
    kind: Literal["dynamic"] = "dynamic"
    width: int = Field(16, ge=1, le=512, description="the generator's base width")
    generator: GeneratorRef  # Input-aware: x' = (1 - m(x)) x + m(x) p(x), per image


TriggerConfig = Annotated[
    Union[PatchTrigger, BlendTrigger, WarpTrigger, SineTrigger, MaskTrigger, LowFrequencyTrigger, BitDepthTrigger,
          DynamicTrigger, FilterTrigger, JpegTrigger, ReflectionTrigger, EncodedTrigger],
    Field(discriminator="kind"),
]


class VerifyStage(StrictModel):
    enabled: bool = True
    triggers: dict[str, TriggerConfig] = Field(default_factory=dict, description="known triggers by name, measured "
                                               "for the report only (ASR); none by default (docs/attacks.md)")
    batch_size: int = Field(500, ge=1)
