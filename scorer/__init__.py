"""scorer: a low-latency scoring service for CPU-bound ML models."""

__version__ = "0.1.0"

from scorer.app import create_app  # after __version__, which the app reports

__all__ = ["__version__", "create_app"]
