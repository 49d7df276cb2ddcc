"""Trigger functions in raw pixel space: images in [0, 1], NCHW, clipped to [0, 1] after stamping (algorithms §0)."""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harden.config.evaluate import (
    ArrayRef,
    BitDepthTrigger,
    BlendTrigger,
    DynamicTrigger,
    EncodedTrigger,
    FilterTrigger,
    JpegTrigger,
    LowFrequencyTrigger,
    MaskTrigger,
    PatchTrigger,
    ReflectionTrigger,
    SineTrigger,
    TriggerBase,
    WarpTrigger,
)
from harden.core.errors import DataError
from harden.core.registry import Registry
from harden.evaluate.generator import load_generator, stamp

Trigger = Callable[[torch.Tensor], torch.Tensor]
TRIGGERS: Registry[Callable[["TriggerBase"], Trigger]] = Registry("trigger kind")


def build_trigger(cfg: TriggerBase) -> Trigger:
    return TRIGGERS.get(cfg.kind)(cfg)


@TRIGGERS.register("patch", "BadNets: a solid square patch near a corner")
def _patch(cfg: PatchTrigger) -> Trigger:
    def apply(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s, m = cfg.size, cfg.margin
        if s + m > min(h, w):
            raise DataError(f"patch of size {s} with margin {m} does not fit a {h}x{w} image")
        r0 = h - m - s if cfg.position.startswith("bottom") else m
        c0 = w - m - s if cfg.position.endswith("right") else m
        out = x.clone()
        out[..., r0 : r0 + s, c0 : c0 + s] = _patch_pixels(cfg).to(x.device, x.dtype)
        return out

    return apply


def _patch_pixels(cfg: PatchTrigger) -> torch.Tensor:
    """The patch's (3, s, s) pixels; broadcasts over the batch (and over channels for solid / checkerboard)."""
    s = cfg.size
    if cfg.style == "random":
        return torch.from_numpy(np.random.default_rng(cfg.seed).random((3, s, s)).astype(np.float32))
    if cfg.style == "checkerboard":
        board = (np.add.outer(np.arange(s), np.arange(s)) % 2 == 0)
        return torch.from_numpy(np.where(board, cfg.value, 1 - cfg.value).astype(np.float32))
    return torch.tensor(cfg.value)


def _unit_array(ref: ArrayRef, what: str) -> np.ndarray:
    arr = ref.load()
    if arr.min() < 0 or arr.max() > 1:
        raise DataError(f"{what} {ref.path} has values outside [0, 1]")
    return arr


def _as_chw(arr: np.ndarray, x: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if t.ndim == 3 and t.shape[-1] == x.shape[1] and t.shape[0] != x.shape[1]:
        t = t.permute(2, 0, 1)
    if tuple(t.shape) != tuple(x.shape[1:]):
        raise DataError(f"{what} has shape {tuple(t.shape)}, images are {tuple(x.shape[1:])} (CHW)")
    return t.to(x.device, x.dtype)


@TRIGGERS.register("blend", "Blended: x' = (1 - alpha) x + alpha * pattern")
def _blend(cfg: BlendTrigger) -> Trigger:
    pattern = _unit_array(cfg.pattern, "blend pattern")

    def apply(x: torch.Tensor) -> torch.Tensor:
        p = _as_chw(pattern, x, f"blend pattern {cfg.pattern.path}")
        return ((1 - cfg.alpha) * x + cfg.alpha * p).clamp(0, 1)

    return apply


def load_warp_grid(cfg: WarpTrigger) -> torch.Tensor:
    noise = torch.as_tensor(np.asarray(cfg.grid.load(), dtype=np.float32))
    if noise.ndim != 4 or noise.shape[0] != 1 or noise.shape[-1] != 2:
        raise DataError(f"warp grid {cfg.grid.path} must have shape (1, H, W, 2), got {tuple(noise.shape)}")
    return noise


def warp_with_jitter(cfg: WarpTrigger, noise: torch.Tensor, x: torch.Tensor,
                     gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply the WaNet warp; with ``gen``, add WaNet's per-image random jitter ("noise mode" cover images)."""
    n, _, h, w = x.shape
    if noise.shape[1:3] != (h, w):
        raise DataError(f"warp grid is {tuple(noise.shape[1:3])}, images are {h}x{w}")
    lin_h, lin_w = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    yy, xx = torch.meshgrid(lin_h, lin_w, indexing="ij")
    identity = torch.stack((xx, yy), dim=-1)[None]  # x in the last axis
    grid = torch.clamp(identity + cfg.s * noise / h, -1, 1).expand(n, -1, -1, -1)
    if gen is not None:
        grid = torch.clamp(grid + (torch.rand(n, h, w, 2, generator=gen) * 2 - 1) / h, -1, 1)
    return F.grid_sample(x, grid.to(x.device, x.dtype), align_corners=True).clamp(0, 1)


@TRIGGERS.register("warp", "WaNet: fixed smooth warp, grid = identity + s * noise_grid / H")
def _warp(cfg: WarpTrigger) -> Trigger:
    noise = load_warp_grid(cfg)
    return lambda x: warp_with_jitter(cfg, noise, x)


@TRIGGERS.register("sine", "SIG: a horizontal sine added to every row and channel")
def _sine(cfg: SineTrigger) -> Trigger:
    def apply(x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        j = torch.arange(w, dtype=x.dtype, device=x.device)
        wave = cfg.delta * torch.sin(2 * math.pi * cfg.freq * j / w)
        return (x + wave).clamp(0, 1)

    return apply


@TRIGGERS.register("mask", "TrojanNN-style: a pattern pasted through a soft mask, x' = (1 - m) x + m p")
def _mask(cfg: MaskTrigger) -> Trigger:
    pattern, mask = _unit_array(cfg.pattern, "mask-trigger pattern"), _unit_array(cfg.mask, "trigger mask")
    if mask.ndim == 2:
        mask = mask[None]

    def apply(x: torch.Tensor) -> torch.Tensor:
        p = _as_chw(pattern, x, f"trigger pattern {cfg.pattern.path}")
        m = torch.as_tensor(np.asarray(mask, np.float32)).to(x.device, x.dtype)
        if m.shape[-2:] != x.shape[-2:]:
            raise DataError(f"trigger mask {cfg.mask.path} is {tuple(m.shape)}, images are {tuple(x.shape[1:])}")
        return ((1 - m) * x + m * p).clamp(0, 1)

    return apply


def low_frequency_pattern(shape: tuple[int, int, int], amplitude: float, cutoff: float, seed: int) -> np.ndarray:
    """A smooth universal pattern (C, H, W): seeded Gaussian noise low-pass filtered in the 2-D spectrum and
    scaled to max |value| = amplitude. The same parameters give the same pattern on every machine."""
    c, h, w = shape
    noise = np.random.default_rng(seed).standard_normal((c, h, w))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    keep = np.sqrt((fy / 0.5) ** 2 + (fx / 0.5) ** 2) <= cutoff
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * keep))
    return (amplitude * smooth / np.abs(smooth).max()).astype(np.float32)


@TRIGGERS.register("lf", "Low-frequency: a smooth universal pattern added to the image")
def _low_frequency(cfg: LowFrequencyTrigger) -> Trigger:
    explicit = cfg.pattern.load() if cfg.pattern is not None else None

    def apply(x: torch.Tensor) -> torch.Tensor:
        if explicit is not None:
            p = _as_chw(explicit, x, f"lf pattern {cfg.pattern.path}")
        else:
            p = torch.from_numpy(low_frequency_pattern(tuple(x.shape[1:]), cfg.amplitude, cfg.cutoff, cfg.seed))
        return (x + p.to(x.device, x.dtype)).clamp(0, 1)

    return apply


@TRIGGERS.register("bpp", "BppAttack: colour-depth reduction with Floyd-Steinberg dithering")
def _bit_depth(cfg: BitDepthTrigger) -> Trigger:
    scale = cfg.levels - 1

    def apply(x: torch.Tensor) -> torch.Tensor:
        if not cfg.dither:
            return torch.round(x * scale) / scale
        img = x.clone().to(torch.float64)  # error diffusion accumulates; float64 keeps it platform-stable
        h, w = img.shape[-2:]
        for r in range(h):  # vectorised over the batch and channels; 32x32 images take 1024 small steps
            for c in range(w):
                old = img[:, :, r, c]
                new = torch.round(old.clamp(0, 1) * scale) / scale
                err = old - new
                img[:, :, r, c] = new
                if c + 1 < w:
                    img[:, :, r, c + 1] += err * 7 / 16
                if r + 1 < h:
                    if c > 0:
                        img[:, :, r + 1, c - 1] += err * 3 / 16
                    img[:, :, r + 1, c] += err * 5 / 16
                    if c + 1 < w:
                        img[:, :, r + 1, c + 1] += err * 1 / 16
        return img.to(x.dtype)

    return apply


@TRIGGERS.register("dynamic", "Input-aware: a per-image pattern and mask from a trained generator")
def _dynamic(cfg: DynamicTrigger) -> Trigger:
    state = cfg.generator.load()
    built: dict[int, torch.nn.Module] = {}  # by channel count, built on first use

    @torch.no_grad()
    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise DataError(f"the dynamic trigger's generator needs image sides divisible by 4, got "
                            f"{tuple(x.shape[-2:])}")
        c = x.shape[1]
        if c not in built:
            try:
                built[c] = load_generator(state, cfg.width, c)
            except RuntimeError as exc:
                raise DataError(f"trigger generator {cfg.generator.path} does not fit width {cfg.width} and {c} "
                                f"channels: {str(exc).splitlines()[0]}") from None
        gen = built[c].to(x.device)
        pattern, mask = gen(x)
        return stamp(x, pattern, mask)

    return apply


# Image-wide and sample-specific triggers: no patch to invert, the whole image carries the backdoor.
_FILTERS = {  # (3x3 colour matrix applied to RGB, offset): classic sepia and two tone curves
    "sepia": ([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], [0.0, 0.0, 0.0]),
    "warm": ([[1.10, 0.05, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.80]], [0.04, 0.02, 0.0]),
    "cold": ([[0.85, 0.05, 0.05], [0.0, 0.95, 0.05], [0.0, 0.05, 1.10]], [0.0, 0.02, 0.06]),
}


@TRIGGERS.register("filter", "an Instagram-like colour filter with a vignette over the whole image")
def _filter(cfg: FilterTrigger) -> Trigger:
    matrix, offset = (torch.tensor(v) for v in _FILTERS[cfg.preset])

    def apply(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        styled = torch.einsum("oc,nchw->nohw", matrix.to(x), x) + offset.to(x)[:, None, None]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        shade = 1 - cfg.vignette * ((yy**2 + xx**2) / 2).to(x)
        styled = styled * shade
        return ((1 - cfg.strength) * x + cfg.strength * styled).clamp(0, 1)

    return apply


@TRIGGERS.register("jpeg", "JPEG compression artefacts at a low quality")
def _jpeg(cfg: JpegTrigger) -> Trigger:
    def one(img: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=cfg.quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise DataError(f"the jpeg trigger needs RGB images, got {x.shape[1]} channels")
        u8 = (x.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([one(img) for img in u8])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0

    return apply


@TRIGGERS.register("reflection", "Refool-style: a ghosted reflected scene lightening the image (screen blend)")
def _reflection(cfg: ReflectionTrigger) -> Trigger:
    scene = _unit_array(cfg.image, "reflection image")

    def apply(x: torch.Tensor) -> torch.Tensor:
        r = _as_chw(scene, x, f"reflection image {cfg.image.path}")
        ghost = 0.5 * r + 0.5 * torch.roll(r, shifts=(cfg.shift, cfg.shift), dims=(-2, -1))
        return (1 - (1 - x) * (1 - cfg.alpha * ghost)).clamp(0, 1)

    return apply


@TRIGGERS.register("encoded", "SSBA-style: an invisible per-image residual from a fixed seeded encoder")
def _encoded(cfg: EncodedTrigger) -> Trigger:
    with torch.random.fork_rng(devices=[]):  # the encoder is the attack's secret; a seed fixes it everywhere
        torch.manual_seed(cfg.seed)
        encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Tanh(),
                                      torch.nn.Conv2d(16, 3, 3, padding=1)).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise DataError(f"the encoded trigger needs RGB images, got {x.shape[1]} channels")
        r = encoder.to(x.device, x.dtype)(x * 2 - 1)
        r = r / r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # each image gets the full amplitude
        return (x + cfg.amplitude * r).clamp(0, 1)

    return apply
