"""structlog setup: JSON lines on stderr (journald / log shippers) or a console view.

Health data stays out of the logs (journald keeps them for weeks, outside the
encrypted store): every INS in a log line is masked to its first 3 and last 2
characters (`relay.ins.mask`), by one structlog processor over every value of every
event, and by one filter on the standard-library loggers (aiosmtpd, asyncio). Code
that logs does not have to remember; the audit trail in the database keeps the full
value for traceability.

The walk over the values is half the cost of a line (two audit lines a message), and
nearly no line holds an INS: the line is rendered first, and walked and rendered again
only when its text holds a run of characters an INS could be (`MaskedRenderer`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from relay.ins import mask_in_text


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_in_text(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_masked(v) for v in value)
    return value


def mask_ins(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every INS in the event, nested values included.
    Runs after exception formatting, so a traceback's text is masked too."""
    for key, value in event_dict.items():
        event_dict[key] = _masked(value)
    return event_dict


# What `relay.ins` masks, without its "not inside a longer word" edges: a looser test.
# The renderers never change digits or the letters of 2A/2B (JSON escapes quotes,
# backslashes and control characters; the console view uses repr), so an INS that the
# walk would mask is in the rendered line as this run.
_INS_SHAPED_RUN = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[ABab])[0-9]{8}")


class MaskedRenderer:
    """The last processor: `renderer` over the event, with `mask_ins` first only when
    the rendered line holds an INS-shaped run (then the line is rendered again)."""

    def __init__(self, renderer: structlog.types.Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        # A copy for the first rendering: the console renderer pops the keys it shows.
        line = self.renderer(logger, name, dict(event_dict))
        if isinstance(line, str) and _INS_SHAPED_RUN.search(line) is None:
            return line
        return self.renderer(logger, name, mask_ins(logger, name, event_dict))


class MaskInsFilter(logging.Filter):
    """The same for records of the standard `logging` module (aiosmtpd logs the
    command lines it reads at INFO, "RCPT TO:<INS@patient...>")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_in_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_in_text(record.exc_text)
        return True


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
            MaskedRenderer(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The standard-library loggers (aiosmtpd, asyncio) to stderr too, warnings and up,
    # through the INS filter.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    handler.addFilter(MaskInsFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "relay_handler", False)]:
        root.removeHandler(old)
    handler.relay_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    # aiosmtpd warns on every connection of a listener that requires client
    # certificates ("tls_context.verify_mode not in ..."): for the inbound relay that
    # is the point. Its errors still show.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
