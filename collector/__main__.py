"""`python -m collector`: the same as the `ig-collector` console script."""

from collector import cli

cli.console_main()
