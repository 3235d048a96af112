"""Log records as JSON lines, for ``asyncipc broker --log-json``.

One object per record, on one line: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, then every field a caller attached with ``extra=`` under its own
name, and ``exception`` with the formatted traceback when there is one. A log collector
(journald, Loki, Elasticsearch, ``jq``) then needs no pattern to take a line apart.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter"]

# What every LogRecord carries by itself; anything else in its __dict__ came from
# `extra=`. Taken from a blank record so that attributes later Pythons add stay out too.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_FIXED = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line (see the module docstring).

    An ``extra`` field named like one of the fixed keys is written with a leading
    underscore (``_message``) rather than overwrite it; a value JSON cannot represent is
    written as its ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, without the newline."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD:
                continue
            entry[f"_{key}" if key in _FIXED else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines inside strings, so a traceback stays on one line.
        return json.dumps(entry, default=str, ensure_ascii=False)
