"""`python -m collector`: the same as the `ig-collector` console script."""

from collector import cli

raise SystemExit(cli.main())
