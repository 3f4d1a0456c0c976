"""Structured (JSON) logs that never carry passwords, tokens or API keys."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|api[_-]?key|authorization|cookie", re.I)
# Our own tokens, bearer headers and key=value secrets inside free text.
_SECRET_TEXT = [
    # Credentials in URLs: http://user:password@host
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@\"']+@"), r"\1***@"),
    (re.compile(r"mf_[A-Za-z0-9_-]{8,}"), "mf_***"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (
        re.compile(r"(?i)((?:password|api[_-]?key|token|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        r"\1***",
    ),
]
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


def redact_text(text: str) -> str:
    """Mask anything that looks like a secret in free text."""
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


# Generated upload names (a uuid4 hex and the extension; see microfactory/files.py) and paths in the
# data directory are internal: a message for a user names the file as the user named it.
_STORED_NAME = re.compile(r"\b[0-9a-f]{32}(\.[A-Za-z0-9]{1,10})?\b")


# An absolute path of at least two parts (`/srv/data/work/12/part.scad`), not inside a URL
# (`https://host/a/b`): PrusaSlicer and OpenSCAD name their inputs by such paths.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`:;,()<>\[\]]+/)+([^\s/'\"`:;,()<>\[\]]*)")


def scrub_paths(text: str) -> str:
    """Replace server paths by their last part and stored file names by "the uploaded file".

    For what members see of a job (failure reasons, the preparation log, event reasons): the
    server's layout (data dir, work folders, generated names) is none of their business, the
    file name they uploaded is.
    """
    text = _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(a server folder)", text)
    return _STORED_NAME.sub("the uploaded file", text)


def scrub_internal_names(text: str, data_dir: str | None = None) -> str:
    """Replace internal stored file names and data-directory paths in a user-facing message."""
    if data_dir:
        text = text.replace(data_dir.rstrip("/") + "/", "")
    return _STORED_NAME.sub("the uploaded file", text)


def redact(value: Any, key: str = "") -> Any:
    """Mask secrets in a structure by key name and by content."""
    if key and _SECRET_KEYS.search(key):
        return "***"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as redacted JSON."""
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                data[key] = redact(value, key)
        if record.exc_info:
            data["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


class RedactingFormatter(logging.Formatter):
    """Human-readable lines, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as redacted text."""
        return redact_text(super().format(record))


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """Send redacted logs to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic announces every plugin at INFO; keep its migrations output only.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # aiosqlite's DEBUG lines repeat every statement with its parameters (a machine's
    # connection settings, API keys included): never emit them, even at DEBUG.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
