"""wsgauge benchmarks: ``make bench`` (``python -m benchmarks.run``).

The sidecar benchmark measures, on this machine and in one run, the sidecar
against a direct connection and against nginx proxying the same WebSocket load:
the proxy's own CPU time per relayed message, the added round-trip latency
(p50/p99) and the memory per idle socket, for the ``path`` and ``phoenix`` topic
rules, and writes the figures to ``docs/benchmarks.md``.

Modules: :mod:`~benchmarks.echo_server` (the upstream of the ``path`` runs),
:mod:`~benchmarks.loadgen` (the load generator, run as worker processes),
:mod:`~benchmarks.procstat` (``/proc`` readings), :mod:`~benchmarks.targets`
(the processes under test: upstreams, sidecar, nginx), :mod:`~benchmarks.suite`
(the measurements), :mod:`~benchmarks.core_costs` (the sidecar's pure cores
per message), :mod:`~benchmarks.report` (the Markdown), :mod:`~benchmarks.run`
(the command line) and :mod:`~benchmarks.profile_sidecar` (cProfile of a
sidecar under the benchmark's load, for finding hot spots). WebSocket frames are
built and read by the sidecar's own :mod:`wsgauge_sidecar.wsframes`, handshake keys come from
the ``websockets`` library.
"""
