"""Pipeline configuration: YAML -> validated, path-resolved PipelineConfig, with every problem reported at once."""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from harden.config.evaluate import ArrayRef
from harden.config.ingest import is_registry_uri
from harden.config.schema import PipelineConfig
from harden.core.base import StrictModel
from harden.core.errors import ConfigError

M = TypeVar("M", bound=StrictModel)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_pipeline(path: str | Path, overrides: list[str] | None = None, cwd: Path | None = None) -> PipelineConfig:
    """Read, interpolate, override, validate and resolve a pipeline YAML.

    Args:
        path: the YAML file. Relative paths inside it resolve against its folder.
        overrides: ``key.path=value`` strings; values are parsed as YAML scalars, relative paths resolve against cwd.
        cwd: base for relative paths given in overrides (default: the process cwd).

    Raises:
        ConfigError: every problem found, each with its key path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, [("", "file not found" if not path.exists() else "not a regular file")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [("", f"expected a mapping at the top level, got {type(raw).__name__}")])

    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", problems)
    overridden: set[str] = set()
    for item in overrides or []:
        key, value, err = _parse_override(item)
        if err:
            problems.append((key, err))
            continue
        err = _set_path(raw, key, value)
        if err:
            problems.append((key, err))
        overridden.add(key)
    if problems:
        raise ConfigError(path, problems)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:  # report missing files in the same message, not one round later
        schema = [describe_error(e) for e in exc.errors()]
        raise ConfigError(path, schema + _missing_raw_files(raw, path.parent.resolve(), (cwd or Path.cwd()).resolve(),
                                                            overridden, {k for k, _ in schema})) from None
    cfg = _resolve_paths(cfg, path.parent.resolve(), (cwd or Path.cwd()).resolve(), overridden)
    problems = _check_files(cfg)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def read_yaml_model(path: Path, model: type[M]) -> M:
    """A small YAML file (e.g. `harden zoo train --params`) validated into ``model``; every problem at once."""
    if not path.is_file():
        raise ConfigError(path, [("", "file not found")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", problems)
    if problems:
        raise ConfigError(path, problems)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, [describe_error(e) for e in exc.errors()]) from None


def _interpolate(node: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{key}.{i}", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None or value == "":
                if m.group(2) is not None:
                    return m.group(2)
                problems.append((key, f"environment variable {m.group(1)} is not set (use ${{{m.group(1)}:-default}})"))
                return m.group(0)
            return value

        return _ENV.sub(sub, node)
    return node


def _parse_override(item: str) -> tuple[str, Any, str | None]:
    if "=" not in item:
        return item, None, "an override must look like key.path=value"
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        return key, None, "empty key segment in override"
    try:
        return key, yaml.safe_load(text) if text else "", None
    except yaml.YAMLError as exc:
        return key, None, f"value is not valid YAML: {exc}"


def _set_path(raw: dict[str, Any], key: str, value: Any) -> str | None:
    node: Any = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return f"cannot set {part!r} inside a {type(node).__name__}"
        if node is None:
            return f"{part!r} is null"
    if not isinstance(node, dict):
        return f"cannot set a key inside a {type(node).__name__}"
    node[parts[-1]] = value
    return None


def describe_error(err: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    if err["type"] == "plugin_section":  # a plug-in's own section (core/sections.py): the path goes on below it
        return ".".join([*loc, err["ctx"]["key"]]), err["ctx"]["reason"]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        return key, _unknown_key_message(loc)
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return key, f"{err['msg']}{shown}"


_NC = ("epochs", "steps_per_epoch", "batch_size", "lr", "success", "patience", "init_cost", "early_stop_epochs",
       "anomaly_threshold", "max_norm_ratio", "decisive_norm_ratio", "seed")


MOVED = {
    **{f"stages.scan.{k}": f"stages.scan.detectors.neural_cleanse.{k}" for k in _NC},
    "stages.scan.warp": "stages.scan.detectors.warp (its settings, without `enabled`: naming it turns it on)",
    "stages.scan.grating": "stages.scan.detectors.grating (its settings, without `enabled`: naming it turns it on)",
    **{f"stages.finetune.{old}": f"stages.finetune.repairs.{new}" for old, new in (
        ("distill_weight", "distill.weight"), ("distill_temperature", "distill.temperature"),
        ("distill_mix", "distill.mix"), ("contrastive_weight", "mcl.weight"),
        ("contrastive_temperature", "mcl.temperature"), ("unlearn_weight", "universal_unlearn.weight"),
        ("unlearn_radius", "universal_unlearn.radius"), ("unlearn_steps", "universal_unlearn.steps"),
        ("grating_unlearn_weight", "grating_unlearn.weight"), ("grating_unlearn_on", "grating_unlearn.when"),
        ("grating_amplitude", "grating_unlearn.amplitude"), ("grating_max_freq", "grating_unlearn.max_freq"),
        ("grating_candidates", "grating_unlearn.candidates"), ("grating_keep", "grating_unlearn.keep"),
        ("trigger_unlearn_weight", "trigger_unlearn.weight"), ("trigger_unlearn_steps", "trigger_unlearn.steps"),
        ("trigger_unlearn_step_size", "trigger_unlearn.step_size"), ("fst", "fst (without `enabled`)"),
        ("sau", "sau (without `enabled`)"))},
}


def _unknown_key_message(loc: list[str]) -> str:
    moved = MOVED.get(".".join(loc))
    if moved is not None:
        return (f"this key has moved: write it as {moved}; `repairs` lists every repair that runs, so name "
                "distill too if you want it (docs/pipeline.md)") if ".repairs." in moved else (
            f"this key has moved: write it as {moved} (docs/pipeline.md)")
    allowed = _allowed_keys(loc[:-1])
    hint = difflib.get_close_matches(loc[-1], allowed, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown key{suggestion} Allowed here: {', '.join(sorted(allowed))}" if allowed else "unknown key"


def _allowed_keys(parent: list[str]) -> list[str]:
    model: Any = PipelineConfig
    for part in parent:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _resolve_paths(cfg: PipelineConfig, yaml_dir: Path, cwd: Path, overridden: set[str]) -> PipelineConfig:
    """Make every Path field absolute: YAML-relative, except values given with --set (cwd-relative)."""

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, StrictModel):
            updates = {}
            for name in type(obj).model_fields:
                value = getattr(obj, name)
                new = walk(value, f"{key}.{name}" if key else name)
                if new is not value:
                    updates[name] = new
            return obj.model_copy(update=updates) if updates else obj
        if isinstance(obj, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in obj.items()}
        if isinstance(obj, Path):
            base = cwd if any(key == o or key.startswith(o + ".") for o in overridden) else yaml_dir
            return obj.expanduser() if obj.expanduser().is_absolute() else (base / obj.expanduser()).resolve()
        return obj

    return walk(cfg, "")


def _missing_raw_files(raw: dict[str, Any], yaml_dir: Path, cwd: Path, overridden: set[str],
                       already: set[str]) -> list[tuple[str, str]]:
    """The main input paths, checked on the raw YAML when the schema itself failed."""
    problems = []
    for key in ("model.path", "data.clean.path", "data.test.path"):
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, str) or key in already or is_registry_uri(node):
            continue
        p = Path(node).expanduser()
        p = p if p.is_absolute() else (cwd if key in overridden else yaml_dir) / p
        if not p.exists():
            problems.append((key, f"no such file or folder: {p}"))
    return problems


def _check_files(cfg: PipelineConfig) -> list[tuple[str, str]]:
    problems = []
    checks: list[tuple[str, Path]] = [("model.path", cfg.model.path), ("data.clean.path", cfg.data.clean.path)]
    if cfg.data.test is not None:
        checks.append(("data.test.path", cfg.data.test.path))
    for name, trig in cfg.stages.verify.triggers.items():
        for field_name in type(trig).model_fields:
            ref = getattr(trig, field_name)
            if isinstance(ref, ArrayRef):
                checks.append((f"stages.verify.triggers.{name}.{field_name}.path", ref.path))
    for key, p in checks:
        if isinstance(p, Path) and not p.exists():
            problems.append((key, f"no such file or folder: {p}"))
    return problems


def resolved_dict(cfg: PipelineConfig) -> dict[str, Any]:
    return copy.deepcopy(cfg.model_dump(mode="json"))


def digest_of_resolved(path: Path) -> str | None:
    """The digest, under today's schema, of a run's config.resolved.yaml (None when it no longer validates)."""
    try:
        return PipelineConfig.model_validate(yaml.safe_load(path.read_text())).digest()
    except (OSError, yaml.YAMLError, ValidationError):
        return None
