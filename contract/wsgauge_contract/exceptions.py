"""Exceptions of the shared core (the wire contract, ``HOST:PORT``, the flag mechanism): the
only ones its functions raise."""


class ContractError(ValueError):
    """Base class: input that does not follow the sidecar/operator contract."""


class InvalidStatsDocument(ContractError):
    """A stats document is malformed: bad JSON, wrong types, negative counts, too large."""


class WatchStreamError(ContractError):
    """The ``/stats/watch`` stream broke the framing rules (e.g. a line over the size limit)."""


class AddressError(ValueError):
    """A ``HOST:PORT`` text is malformed (see :mod:`wsgauge_contract.address`)."""


class FlagError(ContractError):
    """A command-line flag or its environment variable holds a value that does not convert."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        """``--flag`` or ``environment variable NAME (--flag)``."""
        self.message = message
        """What is wrong with the value."""
