"""Fixtures of the metrics API integration tests (helpers in ``metrics_api_harness``)."""

from metrics_api_harness import harness

__all__ = ["harness"]
