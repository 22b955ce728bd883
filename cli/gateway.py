"""`routoo gateway`: the OpenAI-compatible gateway alone, against a running selector. Registered by
cli/main.py through `add_commands(subparsers)`; `python -m gateway` runs the same command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gateway.config import add_gateway_arguments, gateway_config_from_args


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("gateway", help="run the OpenAI-compatible gateway against a running selector")
    add_gateway_arguments(p, standalone=True)
    p.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.upstream import UpstreamConfigError
    from selector.pool import PoolError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the old handler: these make that a
    # clean exit rather than a traceback or a kill.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        asyncio.run(serve(gateway_config_from_args(args)))
    except (PoolError, UpstreamConfigError, ValueError, OSError) as e:
        print(f"routoo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    print("gateway stopped", flush=True)
    return 0


def _exit_cleanly(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n")[0])
    add_gateway_arguments(parser, standalone=True)
    sys.exit(cmd_gateway(parser.parse_args(argv)))
