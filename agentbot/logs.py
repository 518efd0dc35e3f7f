"""Logging: loguru as the one stream (aiohttp's stdlib logs routed in), text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

CONTEXT = ("account", "inbox", "conversation", "delivery")


class _Intercept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _json_line(record: Record) -> str:
    data = {"time": record["time"].isoformat(), "level": record["level"].name, "message": record["message"]}
    data.update({k: record["extra"][k] for k in CONTEXT if record["extra"].get(k) is not None})
    if record["exception"]:
        data["exception"] = repr(record["exception"].value)
    record["extra"]["_json"] = json.dumps(data, default=str)
    return "{extra[_json]}\n"


def setup(level: str, fmt: str, sink: TextIO | None = None) -> None:
    """Logs go to `sink`, by default the standard error of the moment."""
    sink = sink or sys.stderr
    logger.remove()
    if fmt == "json":
        logger.add(sink, level=level, format=_json_line, backtrace=False, diagnose=False)
    else:
        logger.add(
            sink,
            level=level,
            backtrace=False,
            diagnose=False,
            format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message}",
        )
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
