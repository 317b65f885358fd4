"""``python -m wsgauge_operator``: same as ``wsgauge-operator``."""

import sys

from wsgauge_operator.cli import main

sys.exit(main())
