"""Kubernetes I/O: every call the operator makes to the API server itself (kopf watches
ConnectionStats).

- :mod:`.kubeapi`: the client (pods, status, conditions, HPAs, scale, Events, ConfigMaps); every
  failure leaves it as :class:`~wsgauge_operator.model.exceptions.KubeApiError`.
- :mod:`.pod_watch`: the operator's own pod list-and-watch, handed to the controller.
- :mod:`.events`: Kubernetes Events on a ConnectionStats, de-duplicated.
- :mod:`.leader_lease` (pure decisions) and :mod:`.leadership` (its I/O loop): leader election over
  a ``coordination.k8s.io/v1`` Lease.
"""
