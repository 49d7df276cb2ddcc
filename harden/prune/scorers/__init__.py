"""Channel scorers. Adding one is a module plus one line in this import list."""

from harden.prune.scorers import anp, clp, dormant  # noqa: F401
from harden.config.prune import SCORERS, ScorerConfig
from harden.prune.scorers.base import Scorer, register_scorer

__all__ = ["SCORERS", "Scorer", "ScorerConfig", "register_scorer"]
