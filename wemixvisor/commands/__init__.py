"""One module per operator verb; each exposes `register(subparsers)` and sets `handler`.

A handler has the signature `(args: argparse.Namespace, ctx: CliContext) -> int` (exit code);
`common` holds what they share. `cli.py` lists them.
"""
