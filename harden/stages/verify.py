"""Verify: clean accuracy and ASR on the triggers the YAML names, before and after. Report and gate only:
nothing here feeds back into a decision."""

from __future__ import annotations

from ..artifacts import VerifyReport
from ..attacks import build_trigger
from ..config import VerifyStage
from ..data import ImageSet
from ..evaluate import Predictor, accuracy, attack_metrics


def run(cfg: VerifyStage, before: Predictor, after: Predictor, after_kind: str, test: ImageSet,
        num_classes: int) -> VerifyReport:
    bs = cfg.batch_size
    acc_b = accuracy(before, test, bs, "clean accuracy (before)")
    acc_a = accuracy(after, test, bs, "clean accuracy (after)")
    asr_b, asr_a, robust = {}, {}, {}
    for name, tcfg in cfg.triggers.items():
        trig = build_trigger(tcfg)
        asr_b[name], _ = attack_metrics(before, test, trig, tcfg, num_classes, bs, f"ASR {name} (before)")
        asr_a[name], robust[name] = attack_metrics(after, test, trig, tcfg, num_classes, bs, f"ASR {name} (after)")
    return VerifyReport(acc_b, acc_a, asr_b, asr_a, robust, after_kind, len(test))


def measure(cfg: VerifyStage, predict: Predictor, test: ImageSet, num_classes: int, label: str
            ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Clean accuracy, ASR and robust accuracy per trigger of one model (e.g. the INT8 file)."""
    acc = accuracy(predict, test, cfg.batch_size, f"clean accuracy ({label})")
    asr, robust = {}, {}
    for name, tcfg in cfg.triggers.items():
        asr[name], robust[name] = attack_metrics(predict, test, build_trigger(tcfg), tcfg, num_classes,
                                                 cfg.batch_size, f"ASR {name} ({label})")
    return acc, asr, robust
