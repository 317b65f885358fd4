"""The control loop: followers of the sidecars and one loop per ConnectionStats.

- :mod:`.controller`: ties fleet state, followers, aggregation, readiness, status and Events.
- :mod:`.connectionstats_state`: what the controller keeps per ConnectionStats (one state object).
- :mod:`.object_loop`: one loop per object (wake, debounce, timer, back-off on errors).
- :mod:`.follower` and :mod:`.follower_set`: one task per sidecar following ``/stats/watch``, and
  the set of them with its limit.
- :mod:`.pod_resync`: periodic pod listing that repairs deletions the watch never delivered.
- :mod:`.telemetry`: the operator's own Prometheus metrics.
"""
