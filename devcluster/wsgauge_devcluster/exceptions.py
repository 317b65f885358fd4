"""Errors raised by the local development cluster (control plane, PKI and pod runner)."""

from __future__ import annotations


class DevClusterError(Exception):
    """Base class of every error the devcluster package raises on purpose."""


class BinaryMissingError(DevClusterError):
    """A Kubernetes/etcd/helm binary is not built yet (run hack/build-k8s.sh or make k8s-bins)."""


class PortInUseError(DevClusterError):
    """A port the control plane needs is already taken by a process we did not start."""


class StartupError(DevClusterError):
    """A component did not start or did not become healthy in time."""


class PkiError(DevClusterError):
    """Making, reading or writing the local control plane's certificates or keys failed."""


class KubeApiError(DevClusterError):
    """The API server answered a request with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API error {status}: {message}")
        self.status = status
        self.message = message
