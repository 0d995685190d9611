#!/usr/bin/env python3
"""Time to the first SSE event through each listener.

Usage: ttfe.py N PATH NAME=PORT [NAME=PORT ...]  > result.json

For each listener one keep-alive HTTP/1.1 connection; N requests per listener, taken in turn
(plain, passthrough, capture, tap, plain, ...) so that machine drift hits all alike, after one
discarded warm-up request each. Per request: milliseconds from sending the request to receiving the
first byte of the first `data:` line, and to the end of the stream. Prints JSON:
{"name": {"first_ms": [...], "total_ms": [...]}, ...}.
"""

import json
import socket
import sys
import time

TERMINATOR = b"\r\n0\r\n\r\n"


def one(sock: socket.socket, path: str) -> tuple[float, float]:
    req = (f"GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n").encode()
    t0 = time.perf_counter()
    sock.sendall(req)
    buf = b""
    first = None
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed mid-stream")
        buf += data
        if first is None and b"data:" in buf:
            first = time.perf_counter()
        if buf.endswith(TERMINATOR):
            end = time.perf_counter()
            break
    if not buf.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {buf[:80]!r}")
    return (first - t0) * 1000.0, (end - t0) * 1000.0


def main() -> None:
    n = int(sys.argv[1])
    path = sys.argv[2]
    listeners = [arg.split("=", 1) for arg in sys.argv[3:]]
    socks = {}
    for name, port in listeners:
        s = socket.create_connection(("127.0.0.1", int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[name] = s
        one(s, path)  # warm-up: connection and upstream pool
    out = {name: {"first_ms": [], "total_ms": []} for name, _ in listeners}
    for _ in range(n):
        for name, _ in listeners:
            first, total = one(socks[name], path)
            out[name]["first_ms"].append(first)
            out[name]["total_ms"].append(total)
    for s in socks.values():
        s.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
