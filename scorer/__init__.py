"""scorer: a low-latency scoring service for CPU-bound ML models."""

from scorer.app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
