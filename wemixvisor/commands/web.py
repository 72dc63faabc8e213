"""`wemixvisor web`: the web console and HTTP API (SPEC §18), a process of its own.

It is a client of one daemon (this home's, by default) or of many (`--connect`, repeatable,
`[NAME=]ENDPOINT` of each daemon's control socket). It listens on loopback unless told
otherwise, and refuses a non-loopback address without TLS. Every request needs the token of
`$DAEMON_HOME/wemixvisor/web.token` (made on first start); `--print-token` and `--print-url`
print it (the URL carries it in its fragment, which no browser sends to a server) and exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Final

from wemixvisor.commands.common import EXIT_OK, EXIT_USAGE, CliContext, CommandError, seconds
from wemixvisor.control.security import keys_dir_of

__all__ = ["DEFAULT_LISTEN", "console_url", "is_loopback", "parse_listen", "register"]

DEFAULT_LISTEN: Final = "127.0.0.1:8731"  # not 8545/8546, a geth node's own RPC ports


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `web` verb."""
    parser = subparsers.add_parser(
        "web",
        help="the web console and HTTP API (a client of one or many daemons)",
        description=(
            "Serve the web console and the HTTP API /api/v1 for this home's daemon, or for "
            "every daemon given with --connect. Every request needs the bearer token of "
            "$DAEMON_HOME/wemixvisor/web.token."
        ),
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; non-loopback needs TLS)",
    )
    parser.add_argument(
        "--connect",
        dest="endpoints",
        action="append",
        metavar="[NAME=]ENDPOINT",
        help="a daemon's control endpoint, repeatable (default: control.endpoint of this home); "
        "NAME becomes its id in /api/v1/daemons/NAME/...",
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS private key (PEM)")
    parser.add_argument(
        "--print-token", action="store_true", help="print the console's token and exit"
    )
    parser.add_argument(
        "--print-url",
        action="store_true",
        help="print the console's URL with the token in its #fragment and exit",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long a request waits for a daemon before 503 (default 5)",
    )
    parser.add_argument(
        "--heartbeat",
        type=seconds,
        default=15.0,
        metavar="SECONDS",
        help="a comment line this often on an idle event stream (default 15)",
    )
    # The console only asks daemons: a broken config.toml must not take it away (§11).
    parser.set_defaults(handler=handle, talks_to_daemon=True)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` too) → (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def console_url(host: str, port: int, token: str, tls: bool) -> str:
    """`http(s)://HOST:PORT/#token=…`."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/#token={token}"


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Serve until interrupted (or print the token / URL)."""
    # The server's packages load only for this verb: the other verbs stay quick to start.
    from wemixvisor.web import (  # noqa: PLC0415
        ConsoleSettings,
        Fleet,
        create_app,
        daemon_id,
        load_or_create_token,
        parse_connect,
    )

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    tls = args.tls_cert is not None or args.tls_key is not None
    if tls and (args.tls_cert is None or args.tls_key is None):
        raise CommandError("--tls-cert and --tls-key go together", EXIT_USAGE)
    if not is_loopback(host) and not tls:
        raise CommandError(
            f"refusing to serve on {host}: it is not a loopback address, and without TLS the "
            "token would cross the network in clear; give --tls-cert and --tls-key, or listen "
            "on 127.0.0.1",
            EXIT_USAGE,
        )
    config = ctx.config
    visor_dir = config.home / "wemixvisor"
    visor_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        token = load_or_create_token(visor_dir)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if args.print_token:
        print(token)
        return EXIT_OK
    if args.print_url:
        print(console_url(host, port, token, tls))
        return EXIT_OK
    known: dict[str, str] = {}
    if args.endpoints:
        try:
            targets = [parse_connect(value) for value in args.endpoints]
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
    else:
        own = config.control.endpoint
        targets = [(daemon_id(own), own)]
        known[targets[0][0]] = config.events.endpoint
    try:
        fleet = Fleet.connect(targets, keys_dir_of(config.home), args.timeout, known)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    app = create_app(ConsoleSettings(fleet=fleet, token=token, heartbeat=args.heartbeat))
    _serve(app, host, port, args.tls_cert, args.tls_key)
    return EXIT_OK


def _serve(app: object, host: str, port: int, cert: Path | None, key: Path | None) -> None:
    import uvicorn  # noqa: PLC0415 - only the serving process needs the server

    print(
        f"wemixvisor web: serving on {'https' if cert else 'http'}://{host}:{port}/ "
        "(wemixvisor web --print-url for the address with the token)",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host,
            port=port,
            log_level="warning",
            access_log=False,  # the event stream's URL may carry the token
            ssl_certfile=str(cert) if cert else None,
            ssl_keyfile=str(key) if key else None,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    server.run()
