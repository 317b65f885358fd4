"""wsgauge operator: follows the wsgauge sidecars and keeps ConnectionStats resources live.

Layout (thin kopf handlers on top, plain modules beneath):

- :mod:`.settings` / :mod:`.cli`: configuration dataclasses and the ``wsgauge-operator`` command.
- :mod:`.spec`: a ConnectionStats ``spec`` parsed and validated into a dataclass.
- :mod:`.fleet`: the in-memory state of pods and what their sidecars report.
- :mod:`.follower`: one asyncio task per pod following its sidecar's ``/stats/watch``.
- :mod:`.backoff`: jittered retry delays, used by every reconnect and retry.
- :mod:`.aggregation`: pure computation of a ConnectionStats ``status``.
- :mod:`.readiness`: pure readiness-gate policy (``wsgauge.dev/connections-ok``).
- :mod:`.status_writer`: coalescing of status writes.
- :mod:`.event_policy`: pure: which Events a change of a ConnectionStats calls for.
- :mod:`.events`: Kubernetes Events on a ConnectionStats, de-duplicated.
- :mod:`.certificates`: X.509 CAs, signed and self-signed certificates (the one certificate helper).
- :mod:`.object_loop`: one loop per object (wake, debounce, timer, back-off on errors).
- :mod:`.connectionstats_state`: what the controller keeps per ConnectionStats.
- :mod:`.kubeapi`: the only module that calls the Kubernetes API (besides kopf itself).
- :mod:`.controller`: ties the above together per ConnectionStats.
- :mod:`.stats_server`: cluster-wide stats JSON, a live NDJSON stream and ``/metrics``.
- :mod:`.handlers`: the kopf handlers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsgauge-operator")
    """The installed distribution's version (written once, in the repository's VERSION file)."""
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
