"""`harden zoo train`: train a (possibly backdoored) model and write it in the shared zoo's folder layout.

Red-team tooling for the efficacy benchmark. The poisoned images are stamped once in float, then rounded back to
uint8, as a real poisoned data set would ship them. The folder is written to a temporary sibling and renamed into
place at the end, so an interrupted run never leaves a half-written model folder; the training itself keeps its last
epoch in `<out>.ckpt`, so the same command run again goes on from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from harden.config.evaluate import WarpTrigger
from harden.core.artifacts import InputContract
from harden.core.errors import HardenError
from harden.core.train import TrainSettings, train
from harden.deploy.onnx import finalize, to_onnx
from harden.evaluate.generator import generator_arrays, load_generator
from harden.evaluate.metrics import accuracy, attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger, load_warp_grid, warp_with_jitter
from harden.ingest.data.sources import ImageSet, _digest, _read_npz, load_images
from harden.ingest.models.loading import load_model, sha256_file
from harden.ingest.models.registry import create_model
from harden.redteam.input_aware import InputAwareHook
from harden.redteam.pruning_aware import plant_decoys
from harden.redteam.recipes import ATTACKS, AttackParams, poison_indices, resolve

CLEAN = "clean"


@dataclass
class ZooJob:
    attack: str
    out: Path
    train_path: Path
    test_path: Path
    arch: str = "preact_resnet18"
    width: int = 16
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0
    limit: int | None = None  # train on a seeded subset (quick recipes, tests)
    exclude: Path | None = None  # images to leave out of training, e.g. a defender set
    params: AttackParams = field(default_factory=AttackParams)
    reference: Path | None = None  # trained clean model (TrojanNN)
    device: str = "cpu"
    channels_last: bool = False  # NHWC convolutions: about 18 % faster at width 16 on CPU (red-team training); at
    # widths of 2-4 channels oneDNN's backward was seen to hang, so tests and tiny models keep the default layout


def contract_for(x: np.ndarray, y: np.ndarray, train_path: Path) -> InputContract:
    """Input contract from the training data: its per-channel mean/std and classes.json labels if present."""
    labels_file = train_path.parent / "classes.json"
    k = int(y.max()) + 1
    labels = tuple(json.loads(labels_file.read_text())) if labels_file.is_file() else tuple(str(i) for i in range(k))
    x01 = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return InputContract(
        input_size=(x.shape[3], x.shape[1], x.shape[2]),
        mean=tuple(round(float(v), 4) for v in x01.mean(0)),
        std=tuple(round(float(v), 4) for v in x01.std(0)),
        labels=labels,
    )


def _without(data: ImageSet, exclude: Path) -> ImageSet:
    ex_x, _ = _read_npz(exclude, "--exclude set")
    banned = {hashlib.sha1(img.tobytes()).digest() for img in ex_x}
    keep = np.array([hashlib.sha1(img.tobytes()).digest() not in banned for img in data.x])
    return data.subset(np.flatnonzero(keep), "without-excluded")


def _stamp(x: np.ndarray, fn, batch: int = 500) -> np.ndarray:
    """Apply an image function (float NCHW [0, 1] -> same) to uint8 NHWC images, rounding back to uint8."""
    out = np.empty_like(x)
    for s in range(0, len(x), batch):
        t = torch.from_numpy(x[s:s + batch]).permute(0, 3, 1, 2).float() / 255.0
        out[s:s + batch] = (fn(t).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return out


def poisoned_training_set(data: ImageSet, trig, poison, num_classes: int, seed: int) -> tuple[ImageSet, dict[str, int]]:
    rng = np.random.default_rng(seed)
    idx, labels, cover = poison_indices(data.y, trig, poison, num_classes, rng)
    x, y = data.x.copy(), data.y.copy()
    stamp = _in_pieces(build_trigger(trig), poison, torch.Generator().manual_seed(seed + 1))
    x[idx] = _stamp(x[idx], stamp)
    y[idx] = labels
    if len(cover):
        if isinstance(trig, WarpTrigger):  # WaNet's noise mode: the warp plus random jitter, labels kept
            gen, grid = torch.Generator().manual_seed(seed), load_warp_grid(trig)
            x[cover] = _stamp(x[cover], lambda t: warp_with_jitter(trig, grid, t, gen))
        else:  # Adap-*'s conservatism samples: stamped, labels kept, so the trigger alone is a weaker signal
            x[cover] = _stamp(x[cover], stamp)
    return ImageSet(x, y, f"{data.source}#poisoned", _digest(x, y)), {"poisoned_images": len(idx),
                                                                        "cover_images": len(cover)}


def _in_pieces(trigger, poison, gen: torch.Generator):
    """The trigger as training stamps it: whole, or (poison.pieces > 0) through a random share of a grid's cells per
    image, so no single training image carries all of it (Adap-Blend / Adap-Patch)."""
    if poison.pieces == 0:
        return trigger

    def apply(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k = poison.pieces
        draw = torch.rand(n, k * k, generator=gen)
        cells = draw < poison.pieces_kept
        cells[torch.arange(n), draw.argmin(1)] = True  # at least one cell: a stamped image always carries some trigger
        keep = F.interpolate(cells.float().view(n, 1, k, k), size=(h, w), mode="nearest")
        return x + keep * (trigger(x) - x)

    return apply


def train_zoo_model(job: ZooJob) -> dict[str, Any]:
    """Train, measure and write one zoo folder; returns the attack.json it wrote."""
    if job.attack != CLEAN:
        ATTACKS.get(job.attack)  # unknown names fail before any data is read
    if job.out.exists():
        raise HardenError(f"{job.out} already exists; choose another --out or delete it")
    t0 = time.time()
    raw_x, raw_y = _read_npz(job.train_path, "training set")
    contract = contract_for(raw_x, raw_y, job.train_path)
    train_set = load_images(job.train_path, contract, "training set", job.limit, job.seed)
    if job.exclude is not None:
        train_set = _without(train_set, job.exclude)
    test = load_images(job.test_path, contract, "test set")
    tmp = job.out.with_name(job.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.manual_seed(job.seed)
        model_args = {"width": job.width}
        model = create_model(job.arch, contract.num_classes, model_args)

        trig, stats, attack_info, hooks = None, {"poisoned_images": 0, "cover_images": 0}, {}, []
        generator_hook: InputAwareHook | None = None
        if job.attack != CLEAN:
            reference = None
            if ATTACKS.get(job.attack).needs_reference:

                if job.reference is None:
                    raise HardenError(f"attack {job.attack!r} needs --reference MODEL_DIR (a trained clean model)")
                reference = load_model(job.reference)
            trig, poison, arrays = resolve(job.attack, job.params, Path("trigger.npz"), job.seed, contract.input_size,
                                           reference)
            if arrays:
                np.savez(tmp / "trigger.npz", **arrays)
            trig_abs = _with_folder(trig, tmp)
            if poison.decoy_fraction > 0:
                hooks, attack_info = _start_from_reference(model, reference, job, train_set, contract,
                                                           poison.decoy_fraction)
            if ATTACKS.get(job.attack).trained_trigger:
                generator_hook = _input_aware_hook(trig_abs, poison, contract, job)
                hooks.append(generator_hook)
            else:
                train_set, stats = poisoned_training_set(train_set, trig_abs, poison, contract.num_classes, job.seed)
            attack_info = {"trigger": trig.model_dump(mode="json"), "poison": poison.model_dump(), **attack_info}

        device = torch.device(job.device)
        val = test.subset(np.random.default_rng(job.seed).permutation(len(test))[:2000], "val")
        settings = TrainSettings(epochs=job.epochs, lr=job.lr, batch_size=job.batch_size, patience=job.epochs + 1,
                                 seed=job.seed, freeze_bn=False, clip_grad_norm=None, max_regression=1.0,
                                 checkpoint=checkpoint_path(job), channels_last=job.channels_last)
        outcome = train(model, train_set, contract, settings,
                        lambda m: accuracy(torch_predictor(m, contract, device), val, label="val accuracy"),
                        device, hooks, label=f"zoo {job.attack}")
        model = outcome.model.cpu().eval()
        if generator_hook is not None:  # ship the trained generator, not its seeded start
            np.savez(tmp / "trigger.npz", **generator_arrays(generator_hook.gen.cpu().eval()))
            stats = {"poisoned_images": 0, "cover_images": 0, **generator_hook.counts}
        predict = torch_predictor(model, contract, torch.device("cpu"))
        clean_acc = accuracy(predict, test, label="test accuracy")
        asr = None
        if trig is not None:
            asr, _ = attack_metrics(predict, test, build_trigger(_with_folder(trig, tmp)), trig, contract.num_classes)
        report = {
            "attack": job.attack, "target": getattr(trig, "target", None), **attack_info,
            "poison_ratio": attack_info.get("poison", {}).get("ratio", 0.0), **stats,
            "architecture": job.arch, "model_args": model_args, "epochs": job.epochs, "lr": job.lr,
            "seed": job.seed, "device": job.device, "train_images": len(train_set), "clean_acc": clean_acc,
            "asr": asr, "train_seconds": round(time.time() - t0), "history": outcome.history,
        }
        _write_folder(tmp, model, job.arch, model_args, contract, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written folder behind
        raise
    tmp.rename(job.out)
    checkpoint_path(job).unlink(missing_ok=True)
    return report


def checkpoint_path(job: ZooJob) -> Path:
    """Where an unfinished training of ``job`` keeps its last epoch: an interrupted `harden zoo train` with the same
    arguments goes on from there (a poisoned set and triggers are rebuilt from the seed, identically). The name holds
    a digest of the arguments, so a changed recipe never resumes another one's weights."""
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in job.__dict__.items() if k not in ("out", "device")}
    fields["params"] = job.params.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return job.out.with_name(f"{job.out.name}.{digest}.ckpt")


def _start_from_reference(model: torch.nn.Module, reference, job: ZooJob, clean: ImageSet, contract: InputContract,
                          fraction: float) -> tuple[list[object], dict[str, Any]]:
    """Pruning-aware attack: continue from the clean reference's weights with its most dormant features dead."""

    ref_state = reference.model.state_dict()
    mine = model.state_dict()
    if ref_state.keys() != mine.keys() or any(ref_state[k].shape != mine[k].shape for k in mine):
        raise HardenError(f"--reference {job.reference} is not a {job.arch} of width {job.width}; the pruning-aware "
                          "attack continues from the reference's weights, so train it with the same --arch/--width")
    model.load_state_dict(ref_state)
    hook, info = plant_decoys(model, clean, contract, fraction)
    weights = job.reference / "model.safetensors"
    return [hook], {"decoys": info, "reference_sha256": sha256_file(weights) if weights.is_file() else None}


def _input_aware_hook(trig, poison, contract: InputContract, job: ZooJob) -> InputAwareHook:
    """The hook training ``trig``'s generator, started from the seeded one already written to trigger.npz."""
    gen = load_generator(trig.generator.load(), trig.width, contract.input_size[0]).train()

    def relabel(y: torch.Tensor) -> torch.Tensor:  # the backdoor's label: the target, or y + 1 for all-to-all
        return torch.from_numpy(trig.targets(y.cpu().numpy(), contract.num_classes)).to(y.device)

    return InputAwareHook(gen, contract, relabel, poison.ratio, poison.ratio * poison.cover_ratio,
                          torch.device(job.device), job.seed)


def _with_folder(trig, folder: Path):
    """The trigger config with its array references (relative to the model folder) made absolute."""
    updates = {}
    for name in type(trig).model_fields:
        ref = getattr(trig, name)
        if isinstance(getattr(ref, "path", None), Path) and not ref.path.is_absolute():
            updates[name] = ref.model_copy(update={"path": folder / ref.path})
    return trig.model_copy(update=updates)


def _write_folder(folder: Path, model: torch.nn.Module, arch: str, model_args: dict[str, Any],
                  contract: InputContract, report: dict[str, Any]) -> None:


    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    report["sha256"] = sha256_file(folder / "model.safetensors")
    config = {
        "architecture": arch, "model_args": model_args, "num_classes": contract.num_classes,
        "label_names": list(contract.labels),
        "pretrained_cfg": {"input_size": list(contract.input_size), "mean": list(contract.mean),
                           "std": list(contract.std), "pixel_scale": 255, "layout": "NCHW"},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    example = torch.zeros(2, *contract.input_size)
    blob, used = to_onnx(model, example, "auto")
    (folder / "model.onnx").write_bytes(finalize(blob, contract.as_metadata(), slim=False).SerializeToString())
    (folder / "attack.json").write_text(json.dumps(report, indent=1))
