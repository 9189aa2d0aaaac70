"""One log format for every record a Keel process writes, Keel's and uvicorn's alike: plain lines
(`KEEL_LOG_FORMAT=plain`, the default) or one JSON object per line (`json`), on stderr.

uvicorn is started with `log_config=None` (keel/serve.py), so its loggers keep no handlers of
their own and their records reach the root handler set here. Never logs a secret itself.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# uvicorn's own loggers: their handlers (if a config gave them any) are dropped, records propagate.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message"[, "exc"]}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "plain") -> None:
    """Idempotent: replaces the root handler, so a second call (a `--workers N` child) changes nothing."""
    level = level.upper() if level.upper() in LEVELS else "INFO"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in UVICORN_LOGGERS:
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
