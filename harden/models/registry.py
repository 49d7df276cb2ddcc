"""Architecture registry: YAML name -> builder(num_classes, **model_args) -> nn.Module."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from ..errors import ModelLoadError
from ..registry import Registry

Builder = Callable[..., nn.Module]
ARCHITECTURES: Registry[Builder] = Registry("architecture")
TORCHVISION_PREFIX = "torchvision/"


def register_arch(name: str, description: str) -> Callable[[Builder], Builder]:
    return ARCHITECTURES.register(name, description)


def _torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_architectures() -> list[tuple[str, str]]:
    """All buildable architectures with a one-line description (harden's own, then torchvision's)."""
    rows = [(e.name, e.description) for e in ARCHITECTURES.entries()]
    rows.append((TORCHVISION_PREFIX + "<name>", f"any of torchvision's {len(_torchvision_classifiers())} classifiers"))
    return rows


def create_model(name: str, num_classes: int, model_args: dict[str, Any] | None = None) -> nn.Module:
    """Build an untrained model by registry name, or ``torchvision/<name>`` for torchvision's classifiers.

    Raises:
        ModelLoadError: unknown name or arguments the builder does not accept.
    """
    args = dict(model_args or {})
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        tv_name = name[len(TORCHVISION_PREFIX):]
        if tv_name not in _torchvision_classifiers():
            raise ModelLoadError(f"unknown torchvision classifier {tv_name!r}; see `harden list` for the names")
        builder: Builder = lambda num_classes, **kw: tvm.get_model(tv_name, weights=None, num_classes=num_classes, **kw)  # noqa: E731
    elif name in ARCHITECTURES:
        builder = ARCHITECTURES.get(name)
    else:
        known = ", ".join(ARCHITECTURES.names())
        raise ModelLoadError(
            f"unknown architecture {name!r}; known: {known}, or {TORCHVISION_PREFIX}<name> for torchvision classifiers"
        )
    try:
        return builder(num_classes=num_classes, **args)
    except TypeError as exc:
        raise ModelLoadError(f"architecture {name!r} does not accept model_args {args}: {exc}") from None
