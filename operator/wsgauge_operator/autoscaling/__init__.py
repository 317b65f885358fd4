"""Autoscaling: the owned HPA, ``desiredReplicas`` and the pod deletion cost.

- :mod:`.hpa` (pure): the HPA manifest a ConnectionStats owns, and the HPA's arithmetic.
- :mod:`.deletion_cost` (pure): the planner of ``controller.kubernetes.io/pod-deletion-cost``.
- :mod:`.autoscaler`: the :class:`~.autoscaler.Autoscaler` hooked into the controller.
- :mod:`.services`: wiring into a running operator (the metrics API and KEDA listeners).
"""
