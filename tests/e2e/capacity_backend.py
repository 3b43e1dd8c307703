"""A test upstream whose capacity is controlled: it serves `capacity` requests per second in
arrival order and queues the rest (a request waits for the work queued ahead of it, so the
latency grows with the queue), answers 503 at once when the wait would pass `max_queue`
seconds, and 500 for a given share of the requests. /_control?capacity=N&errors=S changes it.

Run as a process of its own: python3 capacity_backend.py PORT CAPACITY."""

import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit


class Backend:
    def __init__(self, capacity, max_queue=1.0):
        self.capacity = float(capacity)
        self.max_queue = max_queue
        self.error_share = 0.0
        self.error_credit = 0.0
        self.next_free = 0.0  # when the work queued so far is done

    def control(self, query):
        q = parse_qs(query)
        if "capacity" in q:
            self.capacity = float(q["capacity"][0])
        if "errors" in q:
            self.error_share = float(q["errors"][0])
        return 200, b"capacity %g errors %g\n" % (self.capacity, self.error_share)

    async def serve(self):
        now = time.monotonic()
        start = max(now, self.next_free)
        if start - now > self.max_queue:
            return 503, b"queue full\n"
        self.next_free = start + 1.0 / self.capacity
        await asyncio.sleep(self.next_free - now)
        self.error_credit += self.error_share
        if self.error_credit >= 1.0:
            self.error_credit -= 1.0
            return 500, b"injected error\n"
        return 200, b"ok\n"

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            url = urlsplit(target)
            if url.path == "/_control":
                status, body = self.control(url.query)
            else:
                status, body = await self.serve()
            writer.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (status, len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()


async def main(port, capacity):
    backend = Backend(capacity)
    server = await asyncio.start_server(backend.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
