"""`wemixvisor version`: this tool's version, and the node binary's when a home is set up."""

from __future__ import annotations

import argparse
import json

from wemixvisor import __version__
from wemixvisor.commands.common import CliContext


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `version`."""
    parser = subparsers.add_parser("version", help="print versions")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print wemixvisor's version and, if `current` resolves, the node binary's."""
    from wemixvisor.home.layout import Home, LayoutError, read_current  # noqa: PLC0415
    from wemixvisor.node.process import detect_version  # noqa: PLC0415

    config = ctx.config
    node: dict[str, str | None] = {"target": None, "binary": None, "version": None}
    try:
        current = read_current(Home.from_config(config))
    except LayoutError as exc:
        node["error"] = str(exc)
    else:
        node["target"] = current.target
        node["binary"] = str(current.binary)
        node["version"] = detect_version(current.binary)
    if args.json:
        print(json.dumps({"wemixvisor": __version__, "node": node}))
    else:
        print(f"wemixvisor {__version__}")
        if node.get("error"):
            print(f"node: {node['error']}")
        else:
            print(f"node: {node['version'] or 'version unknown'} ({node['target']})")
    return 0
