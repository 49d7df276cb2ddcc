"""Settings of the fine-tune stage, of each built-in repair and of the Neural Polarizer (torch-free; their code is in
harden/repair/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from harden.core.base import StrictModel
from harden.core.registry import Registry
from harden.core.sections import plugin_sections

if TYPE_CHECKING:  # the implementations import torch; this module must not
    from harden.repair.base import Repair


class RepairConfig(StrictModel):
    """Base of every repair's YAML section."""


REPAIRS: Registry[type[Repair]] = Registry("repair")


class DistillConfig(RepairConfig):
    weight: float = Field(1.0, gt=0, description="weight of the distillation term; restores clean accuracy lost to "
                          "pruning")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation")
    mix: bool = Field(False, description="also distil on mixup blends of clean images (label-free inputs)")


class UniversalUnlearnConfig(RepairConfig):
    weight: float = Field(1.0, gt=0, description="weight of the loss on the perturbed batch")
    radius: float = Field(2.0, gt=0, description="L2 radius of the perturbation, raw pixels in [0, 1]")
    steps: int = Field(5, ge=1, description="signed-ascent steps re-fitting it on each batch")


class FstConfig(RepairConfig):
    weight: float = Field(0.2, ge=0, description="weight of <w, w_suspect> (the paper's alpha)")


class SauConfig(RepairConfig):
    weight: float = Field(1.0, ge=0, description="weight of -log(1 - p(the suspect's wrong class)) on the shared "
                          "adversarial examples")
    eps: float = Field(0.1, gt=0, le=1, description="L-inf radius of the search, raw pixels in [0, 1]")
    steps: int = Field(3, ge=1, description="signed-ascent steps of the search per batch (each costs two passes)")
    adv_weight: float = Field(0.0, ge=0, description="weight of the cross-entropy on the same examples (plain "
                              "adversarial training; 0: off)")


class GratingUnlearnConfig(RepairConfig):
    weight: float = Field(0.5, gt=0, description="weight of distilling the output on a clean image plus the grating "
                          "that pulls hardest towards one class to the suspect's clean output")
    when: Literal["always", "grating_verdict"] = Field(
        "always", description="always: on every model (it costs clean models accuracy too); grating_verdict: only "
        "when the scan's verdict is a grating, in place of the repairs on its one peak grating (MCL, trigger "
        "unlearning)")
    amplitude: float = Field(0.1, gt=0, le=1, description="largest peak amplitude of a grating, raw pixels")
    max_freq: float = Field(12.0, ge=1, le=64, description="highest grating frequency, cycles per image width")
    candidates: int = Field(16, ge=1, description="random gratings drawn per batch")
    keep: int = Field(4, ge=1, description="of those, how many of the strongest one-class pulls are unlearnt")


class MclConfig(RepairConfig):
    weight: float = Field(1.0, gt=0, description="weight of the contrastive term on inputs stamped with the verdict's "
                          "inverted trigger")
    temperature: float = Field(0.5, gt=0, description="temperature of the contrastive term")


class TriggerUnlearnConfig(RepairConfig):
    weight: float = Field(0.3, gt=0, description="weight of the loss on the batch stamped with the re-fitted trigger")
    steps: int = Field(3, ge=1, description="signed-descent steps re-fitting the trigger per batch")
    step_size: float = Field(0.1, gt=0, le=1, description="size of each step, a fraction of the parameters' range "
                             "(pattern: [0, 1]; warp: +-max_shift pixels)")


class PolarizeConfig(StrictModel):
    enabled: bool = False
    at: Optional[str] = Field(None, description="module whose input is polarized (default: the smallest module "
                              "holding every conv that feeds the classifier, e.g. layer4: the full feature path "
                              "before the last stage)")
    epochs: int = Field(10, ge=1, description="reference: 50 (a few GPU-minutes); 10 keeps CPU runs to minutes")
    lr: float = Field(0.001, gt=0, description="reference: 0.01, which lost most held-out accuracy within an epoch "
                      "on a width-16 network (docs/methods.md); 0.001 kept it")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    steps: int = Field(2, ge=1, description="inner targeted-perturbation steps")
    step_size: float = Field(0.1, gt=0, description="inner sign-step size, raw pixel units")
    radius: float = Field(3.0, gt=0, description="L2 radius of the perturbation (raw pixels, 32x32x3)")
    early_stop: float = Field(0.6, gt=0, le=1, description="stop the inner steps once this share hits the target")
    loss_weights: tuple[float, float, float, float] = Field((1.0, 0.4, 0.4, 0.4), description="clean CE, "
                                                            "perturbed CE to the clean prediction, suppress the "
                                                            "strongest wrong class, push from the estimated target")
    max_steps: Optional[int] = Field(None, ge=1, description="cap on optimizer steps (tests and smoke runs)")


# One optional section per repair, keyed by its YAML name; a repair registered later is accepted by name.
RepairSections = plugin_sections("RepairSections", REPAIRS, {
    "distill": DistillConfig, "fst": FstConfig, "grating_unlearn": GratingUnlearnConfig, "mcl": MclConfig, "sau": SauConfig,
    "trigger_unlearn": TriggerUnlearnConfig, "universal_unlearn": UniversalUnlearnConfig})


class FinetuneStage(StrictModel):
    enabled: bool = True
    epochs: int = Field(15, ge=1)
    lr: float = Field(0.005, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    patience: int = Field(6, ge=1, description="epochs without held-out improvement before stopping")
    augment: bool = True
    freeze_bn: bool = Field(True, description="keep BatchNorm running statistics fixed while fine-tuning")
    repairs: RepairSections = Field(  # type: ignore[valid-type]
        default_factory=lambda: RepairSections(distill={}),  # type: ignore[call-arg]
        description="every repair the fine-tune runs, each with its settings: naming any replaces the default "
        "(distillation alone), `{}` is plain fine-tuning; each repair acts only on the models it is for (harden list)")
    clip_grad_norm: Optional[float] = Field(5.0, gt=0, description="gradient-norm clipping (null: off)")
    max_steps: Optional[int] = Field(None, ge=1, description="cap on optimizer steps (tests and smoke runs)")
