"""A TOML syntax error as an admin can act on it: line, column, the line's text, and the
key being read when the error is on a `key = value` line.

`tomllib` says only "Expected newline or end of document after a statement (at line 7,
column 19)" for `valid_until = 2026-13-01` (it reads `2026-13` as far as it can): this
names `mailboxes[0].coholders[0].valid_until` and says what a date looks like.

Pure: works on the text already read.
"""

from __future__ import annotations

import re
import tomllib

__all__ = ["SYNTAX_KEY", "describe_syntax_error"]

SYNTAX_KEY = "<syntax>"  # the key of a syntax problem whose key cannot be known

_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_END = re.compile(r"\s*\(at end of document\)\s*$")
# A bare or quoted key, dotted (TOML 1.0 §Keys), then `=`.
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY_LINE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?")
_DATEISH = re.compile(r"=\s*\d{4}-\d{1,2}-\d{1,2}")


def _parts(dotted: str) -> list[str]:
    found = re.findall(_KEY_PART, dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in found]


def _table_path(lines: list[str], before: int) -> str:
    """The table the line `before` (0-based) is in, with array-of-tables indexes counted
    as the loader names them (`mailboxes[1].coholders[0]`)."""
    counts: dict[tuple[str, ...], int] = {}
    current: list[str] = []
    in_string = False
    for line in lines[:before]:
        # Multi-line strings may contain lines that look like headers: skip their body.
        if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
            in_string = not in_string
            continue
        if in_string:
            continue
        m = _HEADER.match(line)
        if m is None:
            continue
        names = _parts(m.group(2))
        if m.group(1) == "[[":
            key = tuple(names)
            counts[key] = counts.get(key, -1) + 1
            # Deeper arrays restart under a new parent element.
            for other in [k for k in counts if len(k) > len(key) and k[: len(key)] == key]:
                del counts[other]
        current = names
    out: list[str] = []
    for i, name in enumerate(current):
        out.append(name)
        index = counts.get(tuple(current[: i + 1]))
        if index is not None:
            out[-1] = f"{name}[{index}]"
    return ".".join(out)


def describe_syntax_error(text: str, exc: tomllib.TOMLDecodeError) -> tuple[str, str]:
    """(key, message) for a syntax error in `text`; key is `SYNTAX_KEY` when unknown."""
    reason = str(exc)
    lines = text.splitlines()
    m = _WHERE.search(reason)
    if m is None:
        if _END.search(reason):
            reason = _END.sub("", reason)
            last = next((n for n in range(len(lines), 0, -1) if lines[n - 1].strip()), 0)
            near = f" (the last line, {last}: {lines[last - 1].strip()})" if last else ""
            return SYNTAX_KEY, f"TOML syntax error at the end of the file: {reason}{near}"
        return SYNTAX_KEY, reason
    reason = reason[: m.start()]
    line_no, column = int(m.group(1)), int(m.group(2))
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    key = SYNTAX_KEY
    km = _KEY_LINE.match(line)
    if km is not None and _HEADER.match(line) is None:
        table = _table_path(lines, line_no - 1)
        name = ".".join(_parts(km.group(1)))
        key = f"{table}.{name}" if table else name
        if _DATEISH.search(line):
            reason += " (a date is YYYY-MM-DD with a real month and day, unquoted)"
    return key, f"TOML syntax error at line {line_no}, column {column}: {reason}: {line.strip()}"
