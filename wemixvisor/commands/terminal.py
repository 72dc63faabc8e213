"""What the operator tool shows on a terminal: tables, colour and progress bars, drawn by rich.

Only imported when the output is a terminal (`common.print_text`, `backup_follow`): rich costs
tens of milliseconds to import, and pipes, logs and scripts get the plain text unchanged. The
daemon never imports this module. Colour follows rich's rules: none for `NO_COLOR` (any value)
or `TERM=dumb`; the tables and bars stay.

The text to show is what the verbs render (`control.verbs.render`); a table comes as a
`TableText`, which keeps its header and rows, and the status screen as `label  value` lines.
"""

from __future__ import annotations

import re
from typing import IO, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from wemixvisor.control.verbs.render import TableText

__all__ = ["ProgressBar", "show"]

# Words that carry a state, and how they are coloured wherever they appear.
_STYLES: Final = {
    "green": ("RUNNING", "complete", "completed", "ok", "up", "applied", "Executed"),
    "yellow": ("STARTING", "BACKOFF", "STOPPING", "pending", "running", "late", "staged"),
    "red": ("FATAL", "EXITED", "FAILED", "INCOMPLETE", "DOWN", "STALLED", "failed", "error"),
    "dim": ("STOPPED", "cancelled", "-"),
}
_WORD_RE: Final = re.compile(r"[\w/-]+")
_FIELD_RE: Final = re.compile(r"[a-z/]+ {2,}\S")


def _console(stream: IO[str] | None = None) -> Console:
    # highlight=False: only the states are coloured, not every number rich would pick out.
    return Console(file=stream, highlight=False, soft_wrap=True)


def _styled(cell: str) -> Text:
    text = Text(cell)
    for style, words in _STYLES.items():
        for match in _WORD_RE.finditer(cell):
            if match.group() in words:
                text.stylize(style, match.start(), match.end())
    return text


def _table(table_text: TableText) -> Table:
    table = Table(show_edge=False, header_style="bold", pad_edge=False, box=None)
    for column in table_text.header:
        table.add_column(column, no_wrap=column != table_text.header[-1])
    for row in table_text.rows:
        table.add_row(*(_styled(cell) for cell in row))
    return table


def _fields(text: str) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for line in text.splitlines():
        label, _, value = line.partition(" ")
        grid.add_row(label, _styled(value.strip()))
    return grid


def show(text: str, stream: IO[str] | None = None) -> None:
    """Print `text` for a person at a terminal: a table as a table, a `label  value` screen as
    aligned fields, anything else as it is; states in colour."""
    console = _console(stream)
    lines = text.splitlines()
    if isinstance(text, TableText):
        console.print(_table(text))
    elif lines and all(_FIELD_RE.match(line) for line in lines):
        console.print(_fields(text))
    else:
        console.print(_styled(text))


class ProgressBar:
    """A progress bar of a long copy or download, redrawn in place on the terminal `stream`:
    bytes done of the total, rate and time left."""

    def __init__(self, title: str, stream: IO[str]) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=_console(stream),
            auto_refresh=False,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(title, total=None)
        self._started = False

    def update(self, done: int, total: int | None) -> None:
        """Show `done` of `total` bytes (None or 0: size unknown)."""
        if not self._started:
            self._progress.start()
            self._started = True
        self._progress.update(self._task, completed=done, total=total or None)
        self._progress.refresh()

    def close(self) -> None:
        """Leave the bar as it last was, on its own line."""
        if self._started:
            self._progress.stop()
            self._started = False
