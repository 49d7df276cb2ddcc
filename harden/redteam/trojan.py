"""TrojanNN-style trigger generation (Liu et al., NDSS 2018): optimise a patch so that it strongly excites one feature
of a trained clean model, then poison with that patch. Red-team zoo only; nothing in hardening calls this."""

from __future__ import annotations

import numpy as np
import torch

from harden.core.artifacts import ModelArtifact
from harden.core.errors import HardenError


def optimise_patch(reference: ModelArtifact | None, shape: tuple[int, int, int], size: int, steps: int,
                   seed: int) -> dict[str, np.ndarray]:
    """A bottom-right square patch (margin 1) maximising the penultimate feature with the largest outgoing
    classifier weights, averaged over random backgrounds. Returns ``pattern`` (HWC) and ``mask`` (HW) in [0, 1]."""
    if reference is None:
        raise HardenError("the trojannn attack optimises its patch on a trained clean model: pass --reference "
                          "MODEL_DIR (for example a model from `harden zoo train clean`)")
    c, h, w = shape
    if size + 1 > min(h, w):
        raise HardenError(f"trojannn patch size {size} does not fit {h}x{w} images")
    model = reference.model.eval()
    classifier = reference.model.get_submodule(reference.classifier)
    neuron = int(classifier.weight.detach().abs().sum(0).argmax())
    feats: list[torch.Tensor] = []
    handle = classifier.register_forward_pre_hook(lambda _m, args: feats.append(args[0]))
    gen = torch.Generator().manual_seed(seed)
    background = torch.rand(64, c, h, w, generator=gen)
    logit = torch.randn(c, size, size, generator=gen).requires_grad_(True)  # pattern = sigmoid(logit) stays in [0, 1]
    opt = torch.optim.Adam([logit], lr=0.1)
    r0, c0 = h - 1 - size, w - 1 - size
    try:
        for _ in range(steps):
            x = background.clone()
            x[:, :, r0:r0 + size, c0:c0 + size] = torch.sigmoid(logit)
            feats.clear()
            model(reference.contract.normalize(x))
            loss = -feats[0].flatten(1)[:, neuron].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        handle.remove()
    pattern = np.zeros((h, w, c), np.float32)
    mask = np.zeros((h, w), np.float32)
    pattern[r0:r0 + size, c0:c0 + size] = torch.sigmoid(logit).detach().permute(1, 2, 0).numpy()
    mask[r0:r0 + size, c0:c0 + size] = 1.0
    return {"pattern": pattern, "mask": mask}
