"""What the operator serves on its own ports (besides the metrics API and the injector).

- :mod:`.stats_server`: cluster-wide stats JSON, a live NDJSON stream, ``/metrics`` and the probes.
- :mod:`.standby_server`: what a standby replica (or a leader still starting) answers.
- :mod:`.live_view`: the live view's cluster document and what ``/stats/ws`` pushes and answers.
- :mod:`.live_page`: the live page at ``/ui/`` (its files in ``live_assets/``).
"""
