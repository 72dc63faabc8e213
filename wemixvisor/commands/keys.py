"""`wemixvisor keys generate`: CURVE keys for a tcp control endpoint (SPEC §11)."""

from __future__ import annotations

import argparse

from wemixvisor.commands.common import EXIT_FAILURE, CliContext, CommandError
from wemixvisor.control.security import AUTHORIZED_DIR, generate_keys, keys_dir_of


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys generate`."""
    parser = subparsers.add_parser(
        "keys",
        help="CURVE keys of the control socket",
        description="Keys live in $DAEMON_HOME/wemixvisor/keys (mode 0700, files 0600).",
    )
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="write a server and a client keypair, and authorize the client",
        description=(
            "Write server.key/server.key_secret (the daemon's), client.key/client.key_secret "
            f"(this tool's) and {AUTHORIZED_DIR}/client.key (the client allowed in). A tcp "
            "control endpoint uses CURVE whenever the server keys exist; restart the daemon "
            f"after generating them. More clients: copy their public .key into {AUTHORIZED_DIR}/."
        ),
    )
    generate.add_argument(
        "--force",
        action="store_true",
        help="replace existing keys (clients holding the old server key are locked out)",
    )
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace, ctx: CliContext) -> int:
    """Generate the keys."""

    directory = keys_dir_of(ctx.config.home)
    try:
        written = generate_keys(directory, force=args.force)
    except FileExistsError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    except (OSError, RuntimeError) as exc:
        raise CommandError(f"cannot write keys in {directory}: {exc}", EXIT_FAILURE) from None
    for path in written:
        print(f"wrote {path}")
    print(
        "a tcp control endpoint now requires CURVE; restart the daemon. Operator machines need "
        "server.key and client.key_secret in their $DAEMON_HOME/wemixvisor/keys/."
    )
    return 0
