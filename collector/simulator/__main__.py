"""`python -m collector.simulator`: the same as `ig-collector simulate`."""

import sys

from collector.simulator import cli

sys.exit(cli.main())
