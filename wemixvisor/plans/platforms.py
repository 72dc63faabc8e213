"""The keys of a plan's `info.binaries` (SPEC §8): `<os>/<arch>` in Go's spelling, or `any`.

The one table of machine names: the CLI writes a plan's binary under this machine's key and the
daemon looks it up under the same key, so the two can never disagree.
"""

from __future__ import annotations

import platform
from typing import Final

__all__ = ["ANY_PLATFORM", "ARCH_ALIASES", "current_platform", "platform_key"]

ANY_PLATFORM: Final = "any"
"""The `info.binaries` key used when there is none for this machine."""

ARCH_ALIASES: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "arm",  # a 32-bit userland on a 64-bit CPU runs 32-bit binaries
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "armv6l": "arm",
    "armv7l": "arm",
    "arm": "arm",
}
"""`platform.machine()` values (lower-cased) → Go's GOARCH names; others are used as they are."""


def platform_key(system: str, machine: str) -> str:
    """`<os>/<arch>` in Go's spelling: ("Linux", "x86_64") → "linux/amd64"."""
    arch = machine.strip().lower()
    return f"{system.strip().lower()}/{ARCH_ALIASES.get(arch, arch)}"


def current_platform() -> str:
    """This machine's `<os>/<arch>` key, e.g. `linux/amd64`."""
    return platform_key(platform.system(), platform.machine())
