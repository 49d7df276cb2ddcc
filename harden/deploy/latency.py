"""ONNX latency, measured side by side: milliseconds per batch on onnxruntime's CPU provider, one thread, after
warm-up. Ratios between two files measured in the same process are what the report and the gate use; absolute
numbers depend on the machine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runner(path: Path, batch: int, threads: int):
    sess = _session(path, threads)
    shape = [batch] + [int(d) for d in sess.get_inputs()[0].shape[1:]]
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}

    def once() -> float:
        t0 = time.perf_counter()
        sess.run(None, feed)
        return time.perf_counter() - t0

    for _ in range(5):  # warm-up
        once()
    return once


def compare(reference: Path, candidate: Path, batches: tuple[int, ...] = (1, 64), repeats: int = 20,
            rounds: int = 3, threads: int = 1) -> dict[str, dict[str, float]]:
    """Latency of ``candidate`` against ``reference`` per batch size. The two alternate run by run
    (``repeats * rounds`` runs each), so load on a shared machine hits both alike; each side is summarised by its
    fastest run (other processes only ever add time) and its median."""
    out = {}
    for b in batches:
        ref_run, cand_run = _runner(reference, b, threads), _runner(candidate, b, threads)
        ref, cand = [], []
        for _ in range(repeats * rounds):
            ref.append(ref_run())
            cand.append(cand_run())
        out[f"batch_{b}"] = {"reference_ms": 1000 * min(ref), "candidate_ms": 1000 * min(cand),
                             "reference_median_ms": 1000 * float(np.median(ref)),
                             "candidate_median_ms": 1000 * float(np.median(cand)), "ratio": min(cand) / min(ref)}
    return out
