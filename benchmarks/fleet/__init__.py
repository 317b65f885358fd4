"""Fleet-scale simulator and benchmark of the operator (issue #7).

* :mod:`benchmarks.fleet.sim_worker`: one process serving many simulated sidecar admin endpoints
  with the sidecar's own admin code, fed with synthetic counts;
* :mod:`benchmarks.fleet.simulator`: the parent side: worker processes, the simulated Node and
  the pod objects in a real control plane, count changes, clean-up;
* :mod:`benchmarks.fleet.operator_run`: the real ``wsgauge-operator`` as a subprocess and a direct
  client of its metrics API;
* :mod:`benchmarks.fleet.bench`: the measurements and the command line
  (``python -m benchmarks.fleet.bench``);
* :mod:`benchmarks.fleet.fleet_report`: tables and plots.
"""
