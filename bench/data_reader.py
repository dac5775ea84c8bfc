"""The DATA reader alone, in one process: microseconds per 10 KiB letter for
`DotReader` (relay.smtp.dataread, chunks) and for a reader of one `readuntil` per
line (what `smtp_DATA` did before), on the same StreamReader input, in alternation.

    python -m bench.data_reader [--messages 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from relay.smtp.dataread import DotReader

LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
MESSAGE = b"Subject: bench\r\n\r\n" + LINE * 135 + b".\r\nQUIT\r\n"  # about 10 KiB
LINES = MESSAGE.count(b"\n")
SEGMENT = 16 * 1024  # what one recv gives, about


async def by_line(reader: asyncio.StreamReader) -> bytearray:
    content = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b".\r\n":
            return content
        body = line[:-2]
        if len(line) > 1000 or b"\n" in body or b"\r" in body:
            raise ValueError("refused")
        content += line[1:] if line[:1] == b"." else line


async def by_chunk(reader: asyncio.StreamReader) -> bytearray:
    dots = DotReader(max_line_bytes=1000, max_message_bytes=0)
    while True:
        after = dots.feed(await reader.read(256 * 1024))
        if after is not None:
            return dots.content


async def timed(read: object, messages: int) -> float:
    assert callable(read)
    start = time.perf_counter()
    for _ in range(messages):
        reader = asyncio.StreamReader(limit=12290)
        for i in range(0, len(MESSAGE), SEGMENT):
            reader.feed_data(MESSAGE[i : i + SEGMENT])
        await read(reader)
    return (time.perf_counter() - start) / messages * 1e6


async def main(args: argparse.Namespace) -> None:
    for r in range(args.rounds):
        line = await timed(by_line, args.messages)
        chunk = await timed(by_chunk, args.messages)
        print(
            f"round {r + 1}: readuntil per line {line:.0f} us/msg, DotReader {chunk:.0f} us/msg,"
            f" ratio {line / chunk:.1f}x ({len(MESSAGE)} bytes, {LINES} lines)"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    uvloop.run(main(p.parse_args()))
