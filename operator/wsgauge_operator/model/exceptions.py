"""Exceptions of the wsgauge operator; translated to kopf errors once, in :mod:`.handlers`."""


class OperatorError(Exception):
    """Base class of every error the operator raises on purpose."""


class ConfigError(OperatorError):
    """The operator's own settings (flags / environment) are invalid."""


class SpecError(OperatorError):
    """A ConnectionStats spec is invalid; reported as a status condition, never a crash."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}" if field else message)
        self.field = field
        self.message = message


class SidecarError(OperatorError):
    """A sidecar could not be read (connection refused, timeout, bad stream)."""


class KubeApiError(OperatorError):
    """A Kubernetes API call failed.

    ``status`` is the HTTP status (0 when the server could not be reached);
    ``retryable`` says whether trying again later may help.
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Server errors, throttling, conflicts and network failures may pass; the rest will not."""
        return self.status == 0 or self.status in (409, 429) or self.status >= 500

    @property
    def not_found(self) -> bool:
        """The object is gone (404)."""
        return self.status == 404
