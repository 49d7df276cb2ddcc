"""Lineage behind a small interface: MlflowTracker records runs, artifacts and the registry; NullTracker does nothing.

mlflow is imported lazily: it costs ~2 s to import and the core library must work without a tracking store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from harden.core.errors import TrackingError


class Tracker(Protocol):
    parent_run_id: str | None

    def pipeline(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> contextlib.AbstractContextManager: ...

    def stage(self, name: str) -> contextlib.AbstractContextManager: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_dict(self, obj: Any, name: str) -> None: ...

    def log_file(self, path: Path, folder: str | None = None) -> None: ...

    def log_dataset(self, x: np.ndarray, y: np.ndarray, name: str, source: str, sha256: str, context: str) -> None: ...

    def register_onnx(self, path: Path, name: str, example: np.ndarray, tags: dict[str, str],
                      aliases: tuple[str, ...] = ("candidate",)) -> str | None: ...

    def set_aliases(self, name: str, version: str, aliases: tuple[str, ...]) -> None: ...

    def kill_stale(self, out_dir: Path) -> int: ...


class NullTracker:
    """Tracking disabled (tracking.enabled: false) and in unit tests."""

    parent_run_id: str | None = None

    @contextlib.contextmanager
    def pipeline(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_dict(self, obj: Any, name: str) -> None: ...

    def log_file(self, path: Path, folder: str | None = None) -> None: ...

    def log_dataset(self, x: np.ndarray, y: np.ndarray, name: str, source: str, sha256: str, context: str) -> None: ...

    def register_onnx(self, path: Path, name: str, example: np.ndarray, tags: dict[str, str],
                      aliases: tuple[str, ...] = ("candidate",)) -> str | None:
        return None

    def set_aliases(self, name: str, version: str, aliases: tuple[str, ...]) -> None: ...

    def kill_stale(self, out_dir: Path) -> int:
        return 0


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*noload.*")
    warnings.filterwarnings("ignore", message=".*dataset source can be interpreted.*")


class StoreLock:
    """An exclusive file lock beside a sqlite store, held for each call into it: two pipelines writing to one sqlite
    file (or creating it at the same moment) take turns instead of failing on "database is locked" or on a half-run
    schema migration. Other stores (an MLflow server) need no lock."""

    def __init__(self, uri: str):
        self.path = Path(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else None
        self.depth, self.handle = 0, None

    def __enter__(self) -> "StoreLock":
        if self.path is not None and self.depth == 0:

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.handle is not None and self.depth == 0:

            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _locked(method):
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class MlflowTracker:
    """One parent run per pipeline, one nested run per stage; a failing stage ends its runs FAILED."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        _quiet_mlflow()
        try:
            import mlflow
        except ImportError:  # pragma: no cover - mlflow is a dependency; kept for slim installs
            raise TrackingError("tracking needs mlflow: pip install mlflow, or set tracking.enabled: false") from None
        self.mlflow = mlflow
        self.uri = uri
        self.parent_run_id = None
        self.lock = StoreLock(uri)
        with self.lock:
            self._open(uri, experiment, artifact_root)

    def _open(self, uri: str, experiment: str, artifact_root: Path) -> None:
        mlflow = self.mlflow
        # mlflow.set_*_uri also exports MLFLOW_*_URI to os.environ; left there, the next pipeline run in this process
        # (the benchmark, library use) and every child process would log into this run's store. Keep the user's.
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is not None:
                exp_id = exp.experiment_id
            else:
                try:
                    exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri()
                                                      if uri.startswith("sqlite") else None)
                except Exception:  # another pipeline on the same server created it a moment ago
                    again = mlflow.get_experiment_by_name(experiment)
                    if again is None:
                        raise
                    exp_id = again.experiment_id
            mlflow.set_experiment(experiment_id=exp_id)
        except Exception as exc:
            raise TrackingError(
                f"cannot open MLflow tracking store {uri!r}: {type(exc).__name__}: {str(exc)[:300]}. "
                "Check tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled: false."
            ) from None

    @contextlib.contextmanager
    def pipeline(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[None]:
        self.out_dir = tags.get("harden.out_dir", "")
        with self._run(name, nested=False, tags=tags) as run:
            self.parent_run_id = run.info.run_id
            self.log_params(params)
            yield

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._run(name, nested=True, tags={"harden.stage": name, "harden.out_dir": self.out_dir}):
            yield

    @_locked
    def kill_stale(self, out_dir: Path) -> int:
        """Mark KILLED the runs a killed process left RUNNING for this output folder."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        exps = [e.experiment_id for e in client.search_experiments()]
        stale = client.search_runs(exps, filter_string=f"tags.`harden.out_dir` = '{out_dir}' and "
                                                        "attributes.status = 'RUNNING'") if exps else []
        for run in stale:
            client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)

    @_locked
    def set_aliases(self, name: str, version: str, aliases: tuple[str, ...]) -> None:
        from mlflow.tracking import MlflowClient

        for alias in aliases:
            MlflowClient().set_registered_model_alias(name, alias, version)

    @contextlib.contextmanager
    def _run(self, name: str, nested: bool, tags: dict[str, str]) -> Iterator[Any]:
        with self.lock:
            run = self.mlflow.start_run(run_name=name, nested=nested, tags=tags)
        try:
            yield run
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with self.lock:
                with contextlib.suppress(Exception):
                    self.mlflow.set_tag("harden.error", f"{type(exc).__name__}: {str(exc)[:4000]}")
                self.mlflow.end_run(status=status)
            raise
        with self.lock:
            self.mlflow.end_run(status="FINISHED")

    @_locked
    def log_params(self, params: dict[str, Any]) -> None:
        self.mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    @_locked
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    @_locked
    def log_dict(self, obj: Any, name: str) -> None:
        self.mlflow.log_dict(obj, name)

    @_locked
    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=folder)

    @_locked
    def log_dataset(self, x: np.ndarray, y: np.ndarray, name: str, source: str, sha256: str, context: str) -> None:
        # from_numpy's own digest hashes only the first 10k values; pass the full-content sha256 instead.
        ds = self.mlflow.data.from_numpy(x[:1], targets=y[:1], name=name, source=source, digest=sha256[:32])
        for attempt in range(3):
            try:
                self.mlflow.log_input(ds, context=context, tags={"sha256": sha256, "images": str(len(y))})
                return
            except Exception as exc:  # an MLflow server's get-or-create of a dataset races with a concurrent run
                if attempt == 2 or "UNIQUE constraint" not in str(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))

    @_locked
    def register_onnx(self, path: Path, name: str, example: np.ndarray, tags: dict[str, str],
                      aliases: tuple[str, ...] = ("candidate",)) -> str | None:
        import onnx
        import onnxruntime as ort
        from mlflow.models import infer_signature
        from mlflow.tracking import MlflowClient

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {sess.get_inputs()[0].name: example})[0]
        info = self.mlflow.onnx.log_model(
            onnx.load(str(path)), name="model", registered_model_name=name,
            signature=infer_signature(example, {"logits": logits}), save_as_external_data=False,
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        for alias in aliases:
            client.set_registered_model_alias(name, alias, version)
        return version


def default_tracking_uri(out: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def make_tracker(cfg, out_dir: Path) -> Tracker:
    """``cfg``: the pipeline's `tracking` section. MLflow, or nothing when tracking is off."""
    if not cfg.enabled:
        return NullTracker()
    return MlflowTracker(cfg.uri or default_tracking_uri(out_dir), cfg.experiment, out_dir / "mlartifacts")
