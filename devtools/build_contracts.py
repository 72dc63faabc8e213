"""Rebuild `contracts/UpgradeGovernance.json` (ABI + bytecode) from its Solidity source.

    python -m devtools.build_contracts           # compile and write the artifact
    python -m devtools.build_contracts --check   # exit 1 when the committed artifact is stale

The compiler is solc-js at a pinned version from the npm registry, installed into
`<cache>/solc/` (`npm install --prefix <cache>/solc solc@<version>`; never committed), and run
with a standard-JSON input whose settings are recorded in the artifact, so the same source and
version give the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.anvil import cache_root

SOLC_VERSION = "0.8.30"
"""solc from npm, pinned: a different compiler gives different bytecode."""

CONTRACT = "UpgradeGovernance"
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
SOURCE = CONTRACTS_DIR / f"{CONTRACT}.sol"
ARTIFACT = CONTRACTS_DIR / f"{CONTRACT}.json"
PACKAGED_ABI = (
    Path(__file__).resolve().parent.parent
    / "wemixvisor"
    / "chain"
    / "governance"
    / f"{CONTRACT}.abi.json"
)
"""The ABI alone, shipped inside the package: an installed daemon reads it from there."""

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    # anvil and geth-family nodes of the tests run Cancun; later opcodes must not appear.
    "evmVersion": "cancun",
    "outputSelection": {
        "*": {
            "*": [
                "abi",
                "evm.bytecode.object",
                "evm.deployedBytecode.object",
                "evm.methodIdentifiers",
            ]
        },
    },
}

_NPM_TIMEOUT = 600.0
_SOLC_TIMEOUT = 300.0


def solcjs() -> Path:
    """Path of the pinned `solcjs`, installed into the cache from npm when missing."""
    prefix = cache_root() / "solc"
    binary = prefix / "node_modules" / ".bin" / "solcjs"
    installed = prefix / "node_modules" / "solc" / "package.json"
    if binary.exists() and installed.exists():
        version = json.loads(installed.read_text()).get("version")
        if version == SOLC_VERSION:
            return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; it is needed to install solc")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            f"solc@{SOLC_VERSION}",
        ],
        check=True,
        timeout=_NPM_TIMEOUT,
    )
    return binary


def source_sha256() -> str:
    """sha256 of the Solidity source, recorded in the artifact to detect a stale build."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def compile_artifact() -> dict[str, Any]:
    """Compile the source with the pinned solc; the artifact as a JSON-ready dict."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH; solc-js needs it")
    request = {
        "language": "Solidity",
        "sources": {SOURCE.name: {"content": SOURCE.read_text()}},
        "settings": SETTINGS,
    }
    completed = subprocess.run(
        [node, str(solcjs()), "--standard-json"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=_SOLC_TIMEOUT,
    )
    # solcjs may print a banner before the JSON answer.
    output = json.loads(completed.stdout[completed.stdout.index("{") :])
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("\n".join(e.get("formattedMessage", str(e)) for e in errors))
    compiled = output["contracts"][SOURCE.name][CONTRACT]
    return {
        "contractName": CONTRACT,
        "source": f"contracts/{SOURCE.name}",
        "sourceSha256": source_sha256(),
        "compiler": {"name": "solc-js", "version": SOLC_VERSION, "settings": SETTINGS},
        "abi": compiled["abi"],
        "methodIdentifiers": compiled["evm"]["methodIdentifiers"],
        "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
    }


def render(artifact: dict[str, Any]) -> str:
    """The artifact file's text: stable key order, so a rebuild gives an identical file."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def render_abi(artifact: dict[str, Any]) -> str:
    """The packaged ABI file's text, in the same stable form."""
    return json.dumps(artifact["abi"], indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Compile and write the artifact, or with --check compare it to the committed one."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.build_contracts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile and compare with the committed artifact; write nothing",
    )
    args = parser.parse_args(argv)
    artifact = compile_artifact()
    outputs = {ARTIFACT: render(artifact), PACKAGED_ABI: render_abi(artifact)}
    if args.check:
        stale = [
            path for path, text in outputs.items() if not path.exists() or path.read_text() != text
        ]
        for path in stale:
            print(f"{path} is stale: run python -m devtools.build_contracts", file=sys.stderr)
        if stale:
            return 1
        print(f"{ARTIFACT} and {PACKAGED_ABI} are up to date")
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
