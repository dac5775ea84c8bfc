"""structlog setup: JSON lines on stderr (journald / log shippers) or a console view."""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiosmtpd warns on every connection of a listener that requires client
    # certificates ("tls_context.verify_mode not in ..."): for the inbound relay that
    # is the point. Its errors still show.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
