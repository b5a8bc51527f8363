"""Re-export of :mod:`evallearn.techniques.training` (the fine-tuning helpers, split by concern)."""

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
