"""Read labelled images from an .npz (``x`` uint8 NHWC, ``y``) or an ImageFolder directory, and split them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harden.core.artifacts import InputContract
from harden.core.errors import DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class ImageSet:
    """Labelled images: x uint8 (N, H, W, C), y int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    source: str
    sha256: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray, tag: str) -> "ImageSet":
        return ImageSet(self.x[idx], self.y[idx], f"{self.source}#{tag}", _digest(self.x[idx], self.y[idx]))

    def batch01(self, idx: np.ndarray | slice, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images at idx as float NCHW in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(self.x[idx])).to(device)
        return x.permute(0, 3, 1, 2).float().div_(255.0)


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    return h.hexdigest()


def load_images(path: Path, contract: InputContract, what: str, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Load and validate a labelled image set against the model's input contract.

    Raises:
        DataError: unreadable file, wrong shape/dtype/size/channels, labels outside the model's classes, empty set.
    """
    if path.is_dir():
        x, y = _read_image_folder(path, contract, what)
    else:
        x, y = _read_npz(path, what)
    c, h, w = contract.input_size
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
        raise DataError(f"{what} ({path}): images have shape {x.shape[1:]}, the model expects {h}x{w}x{c} (HWC)")
    if len(y) == 0:
        raise DataError(f"{what} ({path}) holds no images")
    if len(y) != len(x):
        raise DataError(f"{what} ({path}): {len(x)} images but {len(y)} labels")
    if y.min() < 0 or y.max() >= contract.num_classes:
        raise DataError(
            f"{what} ({path}): labels range {int(y.min())}..{int(y.max())}, the model has {contract.num_classes} classes"
        )
    if limit is not None and limit < len(y):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
        x, y = x[keep], y[keep]
    return ImageSet(x, y, str(path), _digest(x, y))


def _read_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{what} ({path}) must hold arrays 'x' (uint8 NHWC) and 'y'; it has {', '.join(z.files)}")
            x, y = z["x"], z["y"]
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {what} from {path}: {exc}") from None
    if x.dtype != np.uint8:
        raise DataError(f"{what} ({path}): 'x' must be uint8 pixels 0-255, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what} ({path}): 'y' must be integer labels, got {y.dtype}")
    return x, y.astype(np.int64).reshape(-1)


def _read_image_folder(path: Path, contract: InputContract, what: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    index = {name: i for i, name in enumerate(contract.labels)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataError(f"{what} ({path}): class folders {unknown} are not among the model's labels")
    c, h, w = contract.input_size
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise DataError(f"{what}: image folders support 1 or 3 channels, the model expects {c}")
    xs, ys = [], []
    for name in classes:
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                img = np.asarray(Image.open(f).convert(mode))
            except OSError as exc:
                raise DataError(f"{what}: cannot read image {f}: {exc}") from None
            if img.shape[:2] != (h, w):
                raise DataError(f"{what}: {f} is {img.shape[1]}x{img.shape[0]}, the model expects {w}x{h}")
            xs.append(img.reshape(h, w, c))
            ys.append(index[name])
    if not xs:
        raise DataError(f"{what} ({path}) holds no images in class sub-folders")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def stratified_split(data: ImageSet, heldout_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Seeded stratified split into (tune, held-out). Each class present keeps at least one image on each side.

    Raises:
        DataError: a class with a single image cannot be split.
    """
    rng = np.random.default_rng(seed)
    tune, held = [], []
    for cls in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == cls))
        if len(idx) < 2:
            raise DataError(f"{data.source}: class {int(cls)} has {len(idx)} image(s); need at least 2 to split")
        k = min(max(1, int(round(len(idx) * heldout_fraction))), len(idx) - 1)
        held.append(idx[:k])
        tune.append(idx[k:])
    t, h = np.sort(np.concatenate(tune)), np.sort(np.concatenate(held))
    return data.subset(t, "tune"), data.subset(h, "heldout")
