"""What the server tells its operators: Prometheus metrics and structured logs.

A leaf package: it imports nothing of sandboxd, so every layer may use it.
"""

from .logging import configure_logging
from .metrics import Metrics

__all__ = ["Metrics", "configure_logging"]
