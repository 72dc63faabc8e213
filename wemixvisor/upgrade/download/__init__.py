"""Binary downloads for upgrade plans (SPEC §8): choose, fetch, verify, unpack, install.

`source` (URLs, checksums, limits), `fetch` (HTTP with retries, plan info), `archive` (taking
the binary out of an archive) and `install` (`download_binary`); the public names are here.

A plan's `info.binaries` maps `<os>/<arch>` (or `any`) to an URL carrying its checksum
(`?checksum=sha256:<hex>` or `sha512:<hex>`). `download_binary` fetches it into a temporary
directory inside `upgrades/` (same filesystem, so the final rename is atomic), checks the
checksum, takes the node binary out of the archive, proves it runs on this machine, and only
then renames the directory to `upgrades/<name>`. Any failure leaves `upgrades/<name>` untouched.

Archives are never extracted as a tree: every member is validated (paths, types, links, sizes,
count) and then the binary's bytes alone are streamed into a file this module names. Links inside
the archive that stay inside its tree are tolerated (they are never created on disk); links that
leave it, device and fifo entries, absolute or `..` paths and oversized archives are refused.
"""

from wemixvisor.upgrade.download.archive import extract_binary, safe_member_path
from wemixvisor.upgrade.download.fetch import resolve_binary_url
from wemixvisor.upgrade.download.install import download_binary
from wemixvisor.upgrade.download.source import (
    DEFAULT_ATTEMPTS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_UNPACKED,
    DEFAULT_TIMEOUT,
    Checksum,
    DownloadError,
    parse_checksum,
    pick_binary_url,
    plan_has_binaries,
    split_checksum,
)

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_UNPACKED",
    "DEFAULT_TIMEOUT",
    "Checksum",
    "DownloadError",
    "download_binary",
    "extract_binary",
    "parse_checksum",
    "pick_binary_url",
    "plan_has_binaries",
    "resolve_binary_url",
    "safe_member_path",
    "split_checksum",
]
