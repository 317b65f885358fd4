"""The operator's pure model: settings, errors, the ConnectionStats spec and every policy.

Nothing here does I/O, starts a task or reads a clock of its own (callers pass the time); every
other subpackage may import from here, and nothing here imports from them (the unit test
``tests/unit/operator/test_operator_layering.py`` enforces it).

- :mod:`.settings`: one frozen dataclass per concern, every field defaulted (what the flags fill).
- :mod:`.exceptions`: the operator's errors, translated to kopf errors once, in the handlers.
- :mod:`.spec` and :mod:`.label_selector`: a ConnectionStats ``spec`` parsed once into dataclasses,
  with the one label-selector model.
- :mod:`.fleet`: the in-memory state of pods and what their sidecars report (plain data).
- :mod:`.selection`: which pods each ConnectionStats selects, kept incrementally.
- :mod:`.observation`: what one round sees of one pod, as counting input.
- :mod:`.aggregation` and :mod:`.running_totals`: a ConnectionStats ``status`` from its pods, from
  scratch and incrementally.
- :mod:`.readiness`: the readiness-gate policy (``wsgauge.dev/connections-ok``).
- :mod:`.rebalance`: rebalance after scale-out (``spec.rebalance``): holds, sheds, the shed bound.
- :mod:`.event_policy`: which Events a change of a ConnectionStats calls for.
- :mod:`.deletion_cost_policy`: when the deletion cost is written (a scale-down near) and other
  writers of it (detection, yield or overwrite, condition and Events).
- :mod:`.recent_events`: the Events recorded lately per ConnectionStats (for the live view).
- :mod:`.status_writer`: when a status is worth writing (coalescing, injected clock).
- :mod:`.metrics_source`: what the metrics API and the autoscaler read (a protocol over the fleet).
- :mod:`.backoff`: jittered retry delays for every reconnect and retry.
"""
