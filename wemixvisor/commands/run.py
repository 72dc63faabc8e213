"""`wemixvisor run [node args...]`: the daemon in the foreground."""

from __future__ import annotations

import argparse

from wemixvisor.commands.common import CliContext


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`."""
    parser = subparsers.add_parser(
        "run",
        help="run the daemon in the foreground (same as python -m wemixvisor.bootstrap)",
        description="Run the daemon; every argument after `run` is passed to the node verbatim.",
    )
    # `cli.main` cuts the node's arguments off before argparse runs; this entry documents them.
    parser.add_argument("node_args", nargs="*", metavar="NODE_ARG", help="arguments for the node")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Run until SIGTERM/SIGINT."""
    from wemixvisor.bootstrap import run_daemon  # noqa: PLC0415  (the daemon is heavy to import)

    node_args: list[str] = list(args.node_args)
    return run_daemon(ctx.config, node_args, environ=ctx.env, overrides=ctx.overrides)
