"""``python -m wsgauge_sidecar``: the same as the ``wsgauge-sidecar`` console script."""

from wsgauge_sidecar.app import main

main()
