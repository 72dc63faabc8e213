"""wemixvisor: runs a WBFT (geth-family) node and upgrades its binary at an agreed height."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wemixvisor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
