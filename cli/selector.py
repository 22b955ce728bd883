"""`routoo selector`: the selector service alone, against a running predictor (Triton). `python -m
selector.server` runs the same command: the Kubernetes manifests and the image start it that way."""

from __future__ import annotations

import argparse
import logging
import sys

from selector.config import add_selector_arguments, config_from_args


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("selector", help="run the selector alone against a running predictor")
    add_selector_arguments(p)
    p.set_defaults(func=cmd_selector)


def cmd_selector(args: argparse.Namespace) -> int:
    from selector.server import run_event_loop, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    run_event_loop(serve(config), uvloop=config.uvloop)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selector.server",
                                     description="The Routoo selector: cost-aware model choice over gRPC.")
    add_selector_arguments(parser)
    args = parser.parse_args(argv)
    from selector.server import StartupError

    try:
        sys.exit(cmd_selector(args))
    except (StartupError, ValueError) as e:       # a bad pool file or setting (PoolError is a ValueError)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
