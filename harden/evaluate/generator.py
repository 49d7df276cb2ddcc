"""The trigger generator of an input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): an image-conditioned
pattern and mask, x' = (1 - m(x)) x + m(x) p(x). Here only to stamp a trained generator shipped in trigger.npz, so
verify measures it like any other trigger; training one is harden.redteam.input_aware's."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from harden.config.evaluate import GENERATOR_PREFIX


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TriggerGenerator(nn.Module):
    """A small encoder-decoder: two stride-2 stages down, two up; a 3-channel pattern head and a 1-channel mask head."""

    def __init__(self, width: int = 16, channels: int = 3):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(_block(channels, w), _block(w, w), nn.MaxPool2d(2),
                                     _block(w, 2 * w), nn.MaxPool2d(2), _block(2 * w, 4 * w))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), _block(4 * w, 2 * w),
                                     nn.Upsample(scale_factor=2), _block(2 * w, w))
        self.pattern = nn.Conv2d(w, channels, 3, padding=1)
        self.mask = nn.Conv2d(w, 1, 3, padding=1)
        nn.init.constant_(self.mask.bias, -0.15)  # start near the target density instead of half the image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.decoder(self.encoder(x * 2 - 1))
        # a steep sigmoid keeps the mask nearly binary (the paper's tanh(20 x) threshold): the density penalty then
        # shrinks the stamped area, not the stamp's strength
        return torch.sigmoid(self.pattern(h)), torch.sigmoid(20 * self.mask(h))


def stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((1 - mask) * x + mask * pattern).clamp(0, 1)


def generator_arrays(gen: TriggerGenerator) -> dict[str, np.ndarray]:
    """The generator's tensors as trigger.npz holds them (GeneratorRef.load reads them back)."""
    return {GENERATOR_PREFIX + k: v.detach().cpu().numpy() for k, v in gen.state_dict().items()}


def load_generator(state: dict[str, np.ndarray], width: int, channels: int) -> TriggerGenerator:
    gen = TriggerGenerator(width, channels)
    gen.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})  # strict: a file for another width fails here, and the caller reports it
    return gen.eval()
