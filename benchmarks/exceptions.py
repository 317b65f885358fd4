"""The benchmark's exceptions: all that the harness raises on purpose is a BenchmarkError."""

from __future__ import annotations


class BenchmarkError(Exception):
    """A benchmark step could not be carried out (the message says which and why)."""


class ProcessStartError(BenchmarkError):
    """A process under test (upstream, proxy, load worker) did not start or did not get ready."""


class NginxUnavailable(BenchmarkError):
    """A reference proxy (nginx, HAProxy) is not installed and cannot be installed here (its
    runs are skipped)."""


class LoadError(BenchmarkError):
    """The load generator failed: a handshake was refused, a socket ended early, or time ran out."""
