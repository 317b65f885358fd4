"""wsgauge operator: follows the wsgauge sidecars and keeps ConnectionStats resources live.

Subpackages, by role, in layering order (each imports only from those above it; the unit test
``tests/unit/operator/test_operator_layering.py`` fails on an import against this order):

- :mod:`.model`: pure: settings, errors, the spec, fleet state and every policy (aggregation,
  readiness, Events, status coalescing, back-off). No I/O.
- :mod:`.tls`: the one certificate helper and TLS serving.
- :mod:`.kube`: Kubernetes I/O: the API client, the pod watch, Events, leader election.
- :mod:`.metrics_api`: the custom metrics API and the KEDA endpoint.
- :mod:`.injector`: the sidecar injector webhook.
- :mod:`.control`: the sidecar followers and the controller's loop per ConnectionStats.
- :mod:`.autoscaling`: the owned HPA, ``desiredReplicas`` and the deletion cost.
- :mod:`.servers`: the stats server (stats, live stream, ``/metrics``, probes) and the standby
  server.

Entry points, at the bottom: :mod:`.cli` (the ``wsgauge-operator`` command, also
``python -m wsgauge_operator``), :mod:`.handlers` (the thin kopf handlers) and
:mod:`.kubectl_plugin` (the ``kubectl-wsgauge`` command, ``kubectl wsgauge``).
See ``docs/architecture.md`` for how data flows from a socket to the HPA.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsgauge-operator")
    """The installed distribution's version (written once, in the repository's VERSION file)."""
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
