"""The process entry point: `python -m collector` and the `ig-collector` console script."""

from typing import NoReturn

from collector import eventloop


def main() -> NoReturn:
    """Import the command line without collecting garbage meanwhile (`eventloop.start_up`), then run it
    (`cli.console_main`)."""
    with eventloop.start_up():
        from collector import cli  # noqa: PLC0415

    cli.console_main()


if __name__ == "__main__":
    main()
