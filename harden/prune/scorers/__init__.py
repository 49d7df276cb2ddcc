"""Channel scorers. A built-in one is a module here, one name in this import list and its settings class in
harden/config/prune.py (a scorer of your own: any module that calls register_scorer)."""

from harden.config.prune import SCORERS, ScorerConfig
from harden.prune.scorers import anp, clp, dormant  # noqa: F401
from harden.prune.scorers.base import Scorer, register_scorer

__all__ = ["SCORERS", "Scorer", "ScorerConfig", "register_scorer"]
