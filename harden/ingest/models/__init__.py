"""Model architectures, loading and graph surgery. Importing this package registers every architecture."""

from harden.ingest.models import preact, resnet, tiny, vgg  # noqa: F401  (explicit registration list)
from harden.ingest.models.registry import ARCHITECTURES, create_model, list_architectures

__all__ = ["ARCHITECTURES", "create_model", "list_architectures"]
