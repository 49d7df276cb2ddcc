"""Accuracy and attack success rate for any predictor: a torch module or an onnxruntime session."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from harden.config.evaluate import TriggerBase
from harden.core.artifacts import InputContract
from harden.core.progress import track
from harden.evaluate.triggers import Trigger
from harden.ingest.data.sources import ImageSet

# A predictor maps a float NCHW batch in [0, 1] to logits (numpy, N x K).
Predictor = Callable[[torch.Tensor], np.ndarray]


def torch_predictor(model: nn.Module, contract: InputContract, device: torch.device) -> Predictor:
    model = model.to(device).eval()

    @torch.inference_mode()
    def predict(x01: torch.Tensor) -> np.ndarray:
        return model(contract.normalize(x01.to(device))).float().cpu().numpy()

    return predict


def onnx_predictor(path: Path, contract: InputContract, threads: int | None = None) -> Predictor:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(x01: torch.Tensor) -> np.ndarray:
        return sess.run(None, {name: contract.normalize(x01.cpu()).numpy().astype(np.float32)})[0]

    return predict


def predictions(
    predict: Predictor, data: ImageSet, batch_size: int, trigger: Trigger | None = None, label: str = "eval"
) -> np.ndarray:
    out = []
    for start in track(range(0, len(data), batch_size), label):
        x = data.batch01(slice(start, start + batch_size))
        if trigger is not None:
            x = trigger(x)
        out.append(predict(x).argmax(1))
    return np.concatenate(out)


def accuracy(predict: Predictor, data: ImageSet, batch_size: int = 500, label: str = "accuracy") -> float:
    return float((predictions(predict, data, batch_size, label=label) == data.y).mean())


def attack_metrics(
    predict: Predictor, data: ImageSet, trigger: Trigger, spec: TriggerBase, num_classes: int, batch_size: int = 500,
    label: str = "asr",
) -> tuple[float, float]:
    """(ASR, robust accuracy): triggered victims predicted as the backdoor's target, or as their true label.
    Victims are the non-target images (all-to-one) or every image (all-to-all, target y + 1 mod K)."""
    victims = data.subset(spec.victims(data.y), "victims")
    pred = predictions(predict, victims, batch_size, trigger, label)
    return float((pred == spec.targets(victims.y, num_classes)).mean()), float((pred == victims.y).mean())
