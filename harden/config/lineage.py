"""Where runs are recorded: MLflow tracking and the registry name."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from harden.core.base import StrictModel


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or <out>/mlflow.db")
    experiment: str = Field("harden", description="MLflow experiment of the runs")
    registered_model: Optional[str] = Field(None, description="default: harden-<model folder name>")
