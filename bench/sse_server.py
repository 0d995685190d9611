#!/usr/bin/env python3
"""A paced Server-Sent Events upstream for the time-to-first-event measurement.

Usage: sse_server.py PORT [EVENTS] [DELAY_MS]

Answers every request (any method, any path; a request body is read and ignored) with
`200 text/event-stream`, chunked, keep-alive: the first event goes out together with the
headers, then one event every DELAY_MS milliseconds, EVENTS events in all, then `data: [DONE]`.
nginx cannot pace events, hence this server; it only serves the SSE latency probe, never the
throughput rounds.
"""

import asyncio
import sys


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 events: int, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(events):
                ev = b'data: {"id":"chatcmpl-bench","choices":[{"index":0,"delta":{"content":"tok%d "}}]}\n\n' % i
                writer.write(chunk(ev))
                await writer.drain()
                if delay:
                    await asyncio.sleep(delay)
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main() -> None:
    port = int(sys.argv[1])
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    delay = (int(sys.argv[3]) if len(sys.argv) > 3 else 5) / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, events, delay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
