"""The content of DATA (RFC 5321 §4.1.1.4, §4.5.2), read from chunks of any size.

Pure: bytes in, the message (or the reason to refuse it) out. `RelaySMTP.smtp_DATA`
feeds it what the socket gives; it answers, once the line ``.`` has come, with the
bytes that followed it (the client's next commands, pipelined: RFC 2920).

Lines end with CRLF and nothing else. A bare CR or LF anywhere refuses the message
whole (SMTP smuggling: ``\\n.\\r\\n`` must not end it here and be read as an end by
another server), as does a line longer than the limit or a message above its limit;
the content is still read to its end, so that the session goes on in step with the
client. The first of these problems is the one answered.

Whole chunks are checked with a few passes in C (`bytes.count`, `split`, `replace`)
rather than line by line in Python: a 10 KiB letter is about 130 lines, and the
line-by-line loop (one `readuntil` per line) was about a sixth of the event loop under
the per-message SMTP load (py-spy). A chunk in which any check fails is read again
line by line, in order, so that the answer is the same as a line-by-line reader's
(tests/smtp/test_dataread.py checks this on arbitrary input cut arbitrarily).
"""

from __future__ import annotations

from relay.smtp import replies

_CRLF = b"\r\n"
_END_LINE = b".\r\n"
_END_AFTER_LINE = b"\r\n.\r\n"


class DotReader:
    """One DATA transfer. `feed(chunk)` until it returns the bytes after the end line;
    then `content` is the message (dot-stuffing undone, lines ending CRLF) unless
    `problem` holds the reply that refuses it."""

    def __init__(self, *, max_line_bytes: int, max_message_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes  # with its CRLF, as RFC 5321 §4.5.3.1.6
        self.max_message_bytes = max_message_bytes  # 0: no limit
        self.content = bytearray()
        self.problem: str | None = None
        # The start of a line whose end has not come yet (always at a line start).
        self._pending = b""
        # Inside a line already refused as too long: its bytes are dropped up to CRLF.
        self._overlong = False

    def feed(self, data: bytes) -> bytes | None:
        """The bytes after the end line once it has come, else None."""
        buf = self._pending + data if self._pending else data
        self._pending = b""
        if self._overlong:
            cut = buf.find(_CRLF)
            if cut < 0:
                # A CR at the very end may start the CRLF that ends this line.
                self._pending = b"\r" if buf.endswith(b"\r") else b""
                return None
            buf = buf[cut + 2 :]
            self._overlong = False
        # `buf` starts at a line start: the end line is there, or just after a CRLF.
        if buf.startswith(_END_LINE):
            end = 0
        else:
            end = buf.find(_END_AFTER_LINE)
            if end >= 0:
                end += 2  # the end line starts after that CRLF
        if end >= 0:
            self._lines(buf[:end])
            return buf[end + 3 :]
        last = buf.rfind(_CRLF)
        if last >= 0:
            self._lines(buf[: last + 2])
            buf = buf[last + 2 :]
        # How long the line is so far (a CR at the end may be the start of its CRLF).
        if len(buf) - buf.endswith(b"\r") + 2 > self.max_line_bytes:
            # This line cannot end within the limit any more.
            self._refuse(replies.LINE_TOO_LONG.format(limit=self.max_line_bytes))
            self._overlong = True
            buf = b"\r" if buf.endswith(b"\r") else b""
        self._pending = buf
        return None

    def _refuse(self, reply: str) -> None:
        if self.problem is None:
            self.problem = reply
        self.content.clear()

    def _lines(self, region: bytes) -> None:
        """Complete lines, each ending CRLF, the first at a line start."""
        if not region or self.problem is not None:
            return
        crlf = region.count(_CRLF)
        clean = region.count(b"\r") == crlf and region.count(b"\n") == crlf
        if clean and len(region) > self.max_line_bytes:
            clean = max(map(len, region.split(_CRLF))) + 2 <= self.max_line_bytes
        if clean:
            text = region[1:] if region[:1] == b"." else region  # RFC 5321 §4.5.2
            if b"\r\n." in text:
                text = text.replace(b"\r\n.", b"\r\n")
            limit = self.max_message_bytes
            if not limit or len(self.content) + len(text) <= limit:
                self.content += text
                return
        self._line_by_line(region)

    def _line_by_line(self, region: bytes) -> None:
        limit = self.max_message_bytes
        for line in region.split(_CRLF)[:-1]:
            if len(line) + 2 > self.max_line_bytes:
                self._refuse(replies.LINE_TOO_LONG.format(limit=self.max_line_bytes))
                return
            if b"\r" in line or b"\n" in line:
                self._refuse(replies.BARE_LINE_ENDING)
                return
            self.content += line[1:] if line[:1] == b"." else line
            self.content += _CRLF
            if limit and len(self.content) > limit:
                self._refuse(replies.TOO_BIG.format(limit=limit))
                return


__all__ = ["DotReader"]
