"""Daemon logging: loguru to stderr, text or JSON lines, with stdlib/pykka logging bridged."""

from __future__ import annotations

import logging
import sys

from loguru import logger


class _InterceptHandler(logging.Handler):
    """Route stdlib logging records (pykka, zmq, web3) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


_running: dict[str, str] = {}  # level and format of the daemon's sink, once set up


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Replace loguru's default sink; `fmt` is `text` or `json` (one JSON object per line)."""
    _running.update(level=level, format=fmt)
    logger.remove()
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}",
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    logging.getLogger("pykka").setLevel(logging.INFO)


def apply_level(level: str) -> None:
    """Apply a reloaded `log.level` to the daemon's sink (no-op outside the daemon)."""
    if _running and _running["level"] != level:
        logger.info("log level {} -> {}", _running["level"], level)
        setup_logging(level, _running["format"])
