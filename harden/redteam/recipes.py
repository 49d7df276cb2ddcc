"""Attack recipes for the red-team zoo: a trigger (the kinds in triggers.py) plus how a training set is poisoned.

One registry keyed by attack name (``badnets``, ``blended``, ...). Verify only needs the trigger; ``harden zoo train``
uses the whole recipe. Array-backed triggers (blend pattern, warp grid, TrojanNN patch) are generated here from a
seed, written to ``trigger.npz`` and referenced from the trigger config, so a model folder is self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, TypeAdapter, ValidationError

from harden.config.evaluate import TriggerConfig
from harden.config.loading import describe_error
from harden.core.base import StrictModel
from harden.core.errors import ConfigError
from harden.core.registry import Registry
from harden.evaluate.generator import TriggerGenerator, generator_arrays
from harden.evaluate.triggers import low_frequency_pattern
from harden.redteam.trojan import optimise_patch

# generate(trigger params, seed, image shape CHW, reference model or None) -> arrays for trigger.npz; it pops the
# generation-only keys (WaNet's k, TrojanNN's size/steps) from the params, which are not trigger fields.
ArrayMaker = Callable[[dict[str, Any], int, tuple[int, int, int], Any], dict[str, np.ndarray]]


class PoisonConfig(StrictModel):
    ratio: float = Field(0.1, gt=0, le=1, description="poisoned fraction of the training set (of the target class "
                                                       "for clean-label attacks; of each batch for Input-aware)")
    clean_label: bool = Field(False, description="poison target-class images only and keep their labels (SIG)")
    cover_ratio: float = Field(0.0, ge=0, description="WaNet noise mode: this many times the poisoned count get a "
                                                      "jittered trigger and keep their labels; Input-aware: this many "
                                                      "times get another image's trigger (cross-trigger mode); other "
                                                      "triggers: this many times get the (partial) trigger and keep "
                                                      "their labels (the conservatism samples of Adap-*)")
    decoy_fraction: float = Field(0.0, ge=0, lt=1, description="pruning-aware attack: this share of the channels "
                                  "feeding the classifier, the reference model's most dormant, is killed and kept "
                                  "dead during poisoned training (decoys for a defender pruning dormant channels)")
    pieces: int = Field(0, ge=0, le=16, description="Adap-Blend / Adap-Patch: split the image into a pieces x pieces "
                        "grid and stamp each training image through a random share of its cells (the full trigger "
                        "is used at test time); 0 stamps the whole trigger")
    pieces_kept: float = Field(0.5, gt=0, le=1, description="share of the grid cells stamped on each training image")


class AttackParams(StrictModel):
    """The YAML a user gives `harden zoo train --params`: overrides of the recipe's trigger and poisoning."""

    trigger: dict[str, Any] = Field(default_factory=dict)
    poison: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    trigger: dict[str, Any]  # default trigger config (kind + parameters); array refs are filled in by make_arrays
    poison: dict[str, Any]
    make_arrays: ArrayMaker | None = None
    needs_reference: bool = False  # a trained clean model: TrojanNN optimises its patch on it; pruning-aware
    # starts from it
    array_fields: dict[str, str] | None = None  # npz key -> trigger field, where they differ (WaNet: noise_grid)
    trained_trigger: bool = False  # Input-aware: make_arrays gives the generator's seeded start; the zoo trains it
    # with the classifier (no static poisoning) and writes the trained one


ATTACKS: Registry[Recipe] = Registry("attack")
_TRIGGER = TypeAdapter(TriggerConfig)


def resolve(name: str, params: AttackParams, trigger_npz: Path, seed: int, shape: tuple[int, int, int],
            reference: Any = None) -> tuple[TriggerConfig, PoisonConfig, dict[str, np.ndarray]]:
    """The attack's trigger config, poisoning and generated arrays (written by the caller to ``trigger_npz``)."""
    recipe = ATTACKS.get(name)
    raw = {**recipe.trigger, **params.trigger}
    arrays = recipe.make_arrays(raw, seed, shape, reference) if recipe.make_arrays else {}
    if recipe.trained_trigger:
        raw.setdefault("generator", {"path": str(trigger_npz)})
    else:
        for key in arrays:
            raw.setdefault((recipe.array_fields or {}).get(key, key), {"path": str(trigger_npz), "key": key})

    errors: list[tuple[str, str]] = []
    trig = poison = None
    try:
        trig = _TRIGGER.validate_python(raw)
    except ValidationError as exc:  # the user's --params mistake: name the key, not a traceback
        errors += [(f"trigger.{k}" if k else "trigger", m) for k, m in map(describe_error, exc.errors())]
    try:
        poison = PoisonConfig(**{**recipe.poison, **params.poison})
    except ValidationError as exc:
        errors += [(f"poison.{k}" if k else "poison", m) for k, m in map(describe_error, exc.errors())]
    if errors:
        raise ConfigError(f"attack {name!r}", errors, "its parameters",
                          "Fix these keys in the --params YAML (sections `trigger:` and `poison:`) and run again.")
    return trig, poison, arrays


def picture(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A seeded drawn picture (HWC in [0, 1]): a colour gradient with soft-edged ellipses and bars, the stand-in for
    the natural image an attacker blends in (Blended's Hello Kitty) or reflects (Refool's scenes)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = rng.random(c) * (1 - yy[..., None]) + rng.random(c) * yy[..., None]
    for _ in range(7):
        cy, cx, ry, rx = rng.random(4) * [1, 1, 0.35, 0.35] + [0, 0, 0.08, 0.08]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 if rng.random() < 0.6 else \
            np.maximum(np.abs(yy - cy) / ry, np.abs(xx - cx) / rx) ** 2
        weight = np.clip(1.5 - inside, 0, 1)[..., None]  # soft edge
        img = (1 - weight) * img + weight * rng.random(c)
    return img.astype(np.float32)


def _blend_pattern(params: dict[str, Any], seed: int, shape: tuple[int, int, int], _ref: Any) -> dict[str, np.ndarray]:
    """Blended's pattern: uniform noise (the paper's random pattern), a smooth field, or a drawn picture."""
    source = params.pop("source", "noise")
    c, h, w = shape
    if source == "noise":
        return {"pattern": np.random.default_rng(seed).random((h, w, c)).astype(np.float32)}
    if source == "smooth":

        field = low_frequency_pattern(shape, 0.5, 0.1, seed).transpose(1, 2, 0)
        return {"pattern": (field + 0.5).clip(0, 1).astype(np.float32)}
    if source == "picture":
        return {"pattern": picture(shape, seed)}
    raise ConfigError("attack", [("trigger.source", f"{source!r} is not one of noise, smooth, picture")],
                      "its parameters", "Fix trigger.source in the --params YAML and run again.")


def _reflection_scene(params: dict[str, Any], seed: int, shape: tuple[int, int, int],
                      _ref: Any) -> dict[str, np.ndarray]:
    return {"image": picture(shape, seed + 1000)}


def _scattered_patches(params: dict[str, Any], seed: int, shape: tuple[int, int, int],
                       _ref: Any) -> dict[str, np.ndarray]:
    """Adap-Patch: ``count`` random-colour ``size`` x ``size`` patches, one in each quadrant's seeded place."""
    count, size = int(params.pop("count", 4)), int(params.pop("size", 3))
    c, h, w = shape
    rng = np.random.default_rng(seed)
    mask, pattern = np.zeros((h, w), np.float32), np.zeros((h, w, c), np.float32)
    for i in range(count):
        qy, qx = (i // 2) % 2, i % 2
        r = qy * h // 2 + rng.integers(1, h // 2 - size)
        col = qx * w // 2 + rng.integers(1, w // 2 - size)
        mask[r:r + size, col:col + size] = 1
        pattern[r:r + size, col:col + size] = rng.random((size, size, c))
    return {"pattern": pattern, "mask": mask}


def _warp_grid(params: dict[str, Any], seed: int, shape: tuple[int, int, int], _ref: Any) -> dict[str, np.ndarray]:
    """WaNet's noise grid: a k x k uniform field upsampled bicubically and normalised by its mean |value|."""
    k = int(params.pop("k", 4))
    _, h, w = shape
    g = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (1, 2, k, k)).astype(np.float32))
    g = g / g.abs().mean()
    grid = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return {"noise_grid": grid.numpy().astype(np.float32)}


def _untrained_generator(params: dict[str, Any], seed: int, shape: tuple[int, int, int],
                         _ref: Any) -> dict[str, np.ndarray]:

    with torch.random.fork_rng(devices=[]):  # a seeded start without moving the caller's global RNG
        torch.manual_seed(seed)
        return generator_arrays(TriggerGenerator(int(params.get("width", 16)), shape[0]))


def _trojan_patch(params: dict[str, Any], seed: int, shape: tuple[int, int, int], reference: Any) -> dict[str, np.ndarray]:

    size = int(params.pop("size", 5))
    steps = int(params.pop("steps", 300))
    return optimise_patch(reference, shape, size, steps, seed)


ATTACKS.register("badnets", "BadNets: 3x3 white patch, all-to-one")(Recipe(
    {"kind": "patch", "target": 0, "size": 3, "value": 1.0, "position": "bottom-right", "margin": 1}, {"ratio": 0.1}))
ATTACKS.register("badnets_a2a", "BadNets all-to-all: the patch sends label y to y + 1")(Recipe(
    {"kind": "patch", "mode": "all-to-all", "size": 3, "value": 1.0, "position": "bottom-right", "margin": 1},
    {"ratio": 0.1}))
ATTACKS.register("blended", "Blended: 20% uniform-noise pattern (trigger.source: noise, smooth or picture)")(Recipe(
    {"kind": "blend", "target": 0, "alpha": 0.2}, {"ratio": 0.1}, _blend_pattern))
ATTACKS.register("wanet", "WaNet: smooth warp, with noise-mode cover images")(Recipe(
    {"kind": "warp", "target": 0, "s": 0.5}, {"ratio": 0.1, "cover_ratio": 2.0}, _warp_grid,
    array_fields={"noise_grid": "grid"}))
ATTACKS.register("sig", "SIG: clean-label horizontal sine on 80% of the target class")(Recipe(
    {"kind": "sine", "target": 0, "delta": 20 / 255, "freq": 6}, {"ratio": 0.8, "clean_label": True}))
ATTACKS.register("lf", "Low-frequency: smooth universal additive pattern")(Recipe(
    {"kind": "lf", "target": 0, "amplitude": 0.1, "cutoff": 0.15, "seed": 0}, {"ratio": 0.1}))
ATTACKS.register("bpp", "BppAttack: 8-level colour quantisation with dithering")(Recipe(
    {"kind": "bpp", "target": 0, "levels": 8, "dither": True}, {"ratio": 0.1}))
ATTACKS.register("trojannn", "TrojanNN: patch optimised to excite a feature of a clean reference model")(Recipe(
    {"kind": "mask", "target": 0}, {"ratio": 0.1}, _trojan_patch, needs_reference=True))
ATTACKS.register("input_aware", "Input-aware: per-image triggers from a generator trained with the classifier "
                                "(10% of each batch backdoored, 10% cross-trigger)")(Recipe(
    {"kind": "dynamic", "target": 0, "width": 16}, {"ratio": 0.1, "cover_ratio": 1.0}, _untrained_generator,
    trained_trigger=True))
ATTACKS.register("pruning_aware", "Fine-Pruning's pruning-aware BadNets: the backdoor trained into the active "
                                  "channels of a clean reference, its dormant ones left dead as decoys")(Recipe(
    {"kind": "patch", "target": 0, "size": 3, "value": 1.0, "position": "bottom-right", "margin": 1},
    {"ratio": 0.1, "decoy_fraction": 0.3}, needs_reference=True))
ATTACKS.register("filter", "image-wide style change: a colour filter with a vignette")(Recipe(
    {"kind": "filter", "target": 0, "preset": "warm", "strength": 1.0, "vignette": 0.3}, {"ratio": 0.1}))
ATTACKS.register("jpeg", "image-wide compression artefacts: JPEG at quality 10")(Recipe(
    {"kind": "jpeg", "target": 0, "quality": 10}, {"ratio": 0.1}))
ATTACKS.register("refool", "Refool-style reflection: a ghosted drawn scene screen-blended over the image")(Recipe(
    {"kind": "reflection", "target": 0, "alpha": 0.3, "shift": 3}, {"ratio": 0.1}, _reflection_scene))
ATTACKS.register("ssba", "SSBA-style sample-specific: an invisible residual a fixed encoder computes from each "
                         "image")(Recipe({"kind": "encoded", "target": 0, "amplitude": 6 / 255}, {"ratio": 0.1}))
ATTACKS.register("adaptive_blend", "Adap-Blend: a drawn picture blended at 15%, trained through random halves of a "
                                   "4x4 grid with as many label-keeping stamped images (evades latent separation and "
                                   "trigger inversion)")(Recipe(
    {"kind": "blend", "target": 0, "alpha": 0.15, "source": "picture"},
    {"ratio": 0.03, "cover_ratio": 1.0, "pieces": 4, "pieces_kept": 0.5}, _blend_pattern))
ATTACKS.register("adaptive_patch", "Adap-Patch: four random-colour 3x3 patches scattered over the image, trained "
                                   "through random halves of them with label-keeping stamped images")(Recipe(
    {"kind": "mask", "target": 0}, {"ratio": 0.03, "cover_ratio": 1.0, "pieces": 2, "pieces_kept": 0.5},
    _scattered_patches))


def poison_indices(y: np.ndarray, trig: TriggerConfig, poison: PoisonConfig, num_classes: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(poisoned indices, their new labels, cover indices). All-to-one draws from non-target classes; clean-label
    draws from the target class and keeps labels; cover images are disjoint from the poisoned ones."""
    if poison.clean_label:
        pool = np.flatnonzero(y == trig.target)
        n = int(round(poison.ratio * len(pool)))
    else:
        pool = trig.victims(y)
        n = int(round(poison.ratio * len(y)))
    if n > len(pool):
        raise ConfigError("attack", [("poison.ratio", f"{poison.ratio} asks for {n} images, only {len(pool)} qualify")],
                          "its parameters", "Lower poison.ratio in the --params YAML and run again.")
    chosen = np.sort(rng.choice(pool, size=n, replace=False))
    labels = y[chosen] if poison.clean_label else trig.targets(y[chosen], num_classes)
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    n_cover = min(int(round(poison.cover_ratio * n)), len(rest))
    cover = np.sort(rng.choice(rest, size=n_cover, replace=False)) if n_cover else np.zeros(0, np.int64)
    return chosen, labels.astype(np.int64), cover
