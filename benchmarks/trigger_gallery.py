"""Draw one test image under every attack's trigger (docs/triggers.png), from the recipes' default parameters.

    python benchmarks/trigger_gallery.py --reference ../shared/zoo/preact18-clean

TrojanNN's patch is optimised on --reference (a trained clean model); without one that panel is left out. The
Input-aware trigger is a generator trained with its model: --input-aware takes such a model folder (from `harden zoo
train input_aware`) and draws its trigger; without one that panel is left out too (an untrained generator's stamp
shows nothing of the attack).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harden.evaluate.triggers import build_trigger  # noqa: E402
from harden.redteam.groundtruth import read_attack, trigger_from_attack  # noqa: E402
from harden.redteam.recipes import (
    ATTACKS,
    AttackParams,
    resolve,  # noqa: E402
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(os.environ.get("HARDEN_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--test", type=Path, default=data / "cifar10" / "test.npz")
    ap.add_argument("--reference", type=Path, default=None)
    ap.add_argument("--input-aware", type=Path, default=None, help="a trained input_aware model folder")
    ap.add_argument("--index", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "triggers.png")
    args = ap.parse_args()
    with np.load(args.test) as z:
        img = torch.from_numpy(z["x"][args.index]).permute(2, 0, 1).float()[None] / 255.0
    reference = None
    if args.reference is not None:
        from harden.ingest.models.loading import load_model

        reference = load_model(args.reference)
    panels = [("clean image", img)]
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "trigger.npz"
        for name in ATTACKS.names():
            if ATTACKS.get(name).needs_reference and reference is None:
                continue
            if ATTACKS.get(name).trained_trigger:
                if args.input_aware is not None:
                    trig = trigger_from_attack(args.input_aware, read_attack(args.input_aware))
                    panels.append((name, build_trigger(trig)(img)))
                continue
            trig, _, arrays = resolve(name, AttackParams(), npz, 0, tuple(img.shape[1:]), reference)
            if arrays:
                np.savez(npz, **arrays)
            panels.append((name, build_trigger(trig)(img)))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 1.9))
    for ax, (title, x) in zip(axes, panels):
        ax.imshow(x[0].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
