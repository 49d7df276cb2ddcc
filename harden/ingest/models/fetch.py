"""Fetch a model named by an MLflow URI (models:/..., runs:/...) into the run folder, then read it like any local
model folder. The registry is a source the user names explicitly; nothing else is fetched at run time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harden.core.errors import ModelLoadError
from harden.lineage.tracker import _quiet_mlflow


def _find_folder(root: Path) -> Path:
    """The folder holding config.json (the timm hub layout): the download itself or one level below it."""
    if (root / "config.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/config.json"))
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
    raise ModelLoadError(f"the downloaded artifacts hold {listing}, not one model folder with config.json beside "
                         "its weights (the timm hub layout harden reads)")


def fetch(uri: str, dest: Path, tracking_uri: str | None) -> Path:
    """Download ``uri`` into ``dest`` (replacing what a previous run left there) and return the model folder."""

    _quiet_mlflow()
    import mlflow

    uri_store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri_store:
        raise ModelLoadError(f"model.path is {uri}: set tracking.uri (or MLFLOW_TRACKING_URI) to the MLflow store "
                             "that holds it")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri_store  # models:/ resolves here
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=uri_store)
    except Exception as exc:  # MlflowException for unknown names/aliases/runs, OSError for unreachable stores
        raise ModelLoadError(f"model.path {uri}: cannot fetch it from {uri_store} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return _find_folder(Path(local))
