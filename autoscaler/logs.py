"""structlog set-up: JSON lines in the cluster, readable console output on a terminal.

Every module logs through `structlog.get_logger(__name__)`; the controller emits a `decision`
event per role carrying its reasons whenever the role's numbers change (every tick at debug
level), so `kubectl logs` answers "why did it scale".
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

Format = Literal["auto", "json", "console"]


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def configure(*, fmt: Format = "auto", level: str = "info") -> None:
    """Configure structlog once at start-up (idempotent)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # Resolve sys.stderr at each call, not at configure time: it may be swapped later (tests
        # capture it; a daemon may redirect it).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
