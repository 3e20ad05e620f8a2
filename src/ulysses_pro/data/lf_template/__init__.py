"""LLaMA-Factory's chat templates, reimplemented to give its token ids exactly."""

from .registry import TEMPLATES
from .template import LfTemplate

__all__ = ["TEMPLATES", "LfTemplate"]
