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
TIMM_PREFIX = "timm/"


def register_arch(name: str, description: str) -> Callable[[Builder], Builder]:
    return ARCHITECTURES.register(name, description)


def _torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _timm():
    """timm, imported on first use (seconds; most runs never need it)."""
    try:
        import timm
    except ImportError:  # a dependency, but an install can lack it: say how to get it
        raise ModelLoadError("timm architectures need the timm package, a dependency of harden: "
                             "pip install timm") from None
    return timm


def is_timm_name(name: str) -> bool:
    """A bare name timm can build (a timm hub folder's config.json names its architecture without a prefix)."""
    try:
        return _timm().is_model(name)
    except ModelLoadError:
        return False


def list_architectures() -> list[tuple[str, str]]:
    """All buildable architectures with a one-line description (harden's own, then torchvision's and timm's)."""
    rows = [(e.name, e.description) for e in ARCHITECTURES.entries()]
    rows.append((TORCHVISION_PREFIX + "<name>", f"any of torchvision's {len(_torchvision_classifiers())} classifiers"))
    try:
        rows.append((TIMM_PREFIX + "<name>", f"any of timm's {len(_timm().list_models())} architectures, built "
                     "offline (the weights come from your file); a bare timm name works too"))
    except ModelLoadError:
        rows.append((TIMM_PREFIX + "<name>", "timm's architectures (timm is not installed: pip install timm)"))
    return rows


def _timm_builder(name: str) -> Builder:
    timm = _timm()
    if not timm.is_model(name):
        raise ModelLoadError(f"unknown timm architecture {name!r}; `python -c \"import timm; "
                             f"print(timm.list_models('{name.split('_')[0]}*'))\"` lists similar names")

    def build(num_classes: int, **kw: Any) -> nn.Module:
        # pretrained=False: never a download; the weights come from the user's file
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)

    return build


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
    """Build an untrained model by registry name, ``torchvision/<name>`` for torchvision's classifiers,
    ``timm/<name>`` (or a bare name harden does not know and timm does) for timm's, or a Python entry point
    ``module:function`` (imported from ``code_dir`` or the path) only when ``trust_code`` is set.

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
    elif name.startswith(TIMM_PREFIX):
        builder = _timm_builder(name[len(TIMM_PREFIX):])
    elif name in ARCHITECTURES:
        builder = ARCHITECTURES.get(name)
    elif is_timm_name(name):
        builder = _timm_builder(name)
    else:
        known = ", ".join(ARCHITECTURES.names())
        raise ModelLoadError(
            f"unknown architecture {name!r}; known: {known}, {TORCHVISION_PREFIX}<name> for torchvision classifiers, "
            f"or {TIMM_PREFIX}<name> for timm's"
        )
    try:
        return builder(num_classes=num_classes, **args)
    except TypeError as exc:
        raise ModelLoadError(f"architecture {name!r} does not accept model_args {args}: {exc}") from None
