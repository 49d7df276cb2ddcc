"""Architecture registry: YAML name -> builder(num_classes, **model_args) -> nn.Module."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from harden.core.errors import ModelLoadError
from harden.core.registry import Registry

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


def _entry_point(name: str, code_dir: Path | None) -> Builder:

    module, _, func = name.partition(":")
    added = code_dir is not None and str(code_dir) not in sys.path
    if added:
        sys.path.insert(0, str(code_dir))
    try:
        return getattr(importlib.import_module(module), func)
    except Exception as exc:  # the user's own module: ImportError, AttributeError, or whatever it raises on import
        raise ModelLoadError(f"architecture entry point {name!r}: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(code_dir))


def create_model(name: str, num_classes: int, model_args: dict[str, Any] | None = None, trust_code: bool = False,
                 code_dir: Path | None = None) -> nn.Module:
    """Build an untrained model by registry name, ``torchvision/<name>`` for torchvision's classifiers, or a Python
    entry point ``module:function`` (imported from ``code_dir`` or the path) only when ``trust_code`` is set.

    Raises:
        ModelLoadError: unknown name, untrusted entry point, or arguments the builder does not accept.
    """
    args = dict(model_args or {})
    if ":" in name and not name.startswith(TORCHVISION_PREFIX):
        if not trust_code:
            raise ModelLoadError(f"architecture {name!r} is a Python entry point (module:function): building it runs "
                                 "code from outside harden. Refused unless the pipeline sets model.trust_code: true "
                                 "(only for code you have reviewed)")
        builder = _entry_point(name, code_dir)
    elif name.startswith(TORCHVISION_PREFIX):
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
