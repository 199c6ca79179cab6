"""A raw HTTP client over one socket, for tests that read a streamed response piece by piece
(the SockJS protocol suite's ``r.read()`` is "the next chunk") or speak HTTP/1.0."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from .timing import scaled


class RawResponse:
    def __init__(self, conn: "RawHttp", status: int, http: str, headers: dict[str, str]):
        self.conn = conn
        self.status = status
        self.http = http
        self.headers = headers  # lower-case names; the first of repeated ones
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"

    def __getitem__(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def read_chunk(self) -> str:
        """The next chunk of a chunked body ("" at its end), or the next bytes of an unchunked one
        ("" when the server closed the connection)."""
        if not self.chunked:
            data = self.conn.recv_some()
            return data.decode("utf-8")
        size_line = self.conn.read_line()
        size = int(size_line.split(";")[0], 16)
        data = self.conn.read_exact(size) if size else b""
        self.conn.read_line()  # the CRLF after the chunk
        return data.decode("utf-8")

    def read_body(self) -> str:
        """The whole body (Content-Length, chunked, or until the connection closes)."""
        if "content-length" in self.headers:
            return self.conn.read_exact(int(self.headers["content-length"])).decode("utf-8")
        if self.chunked:
            parts = []
            while True:
                chunk = self.read_chunk()
                if not chunk:
                    return "".join(parts)
                parts.append(chunk)
        parts = []
        while True:
            data = self.conn.recv_some()
            if not data:
                return "".join(p.decode("utf-8") for p in parts)
            parts.append(data)


class RawHttp:
    def __init__(self, url: str, timeout: float = 10):
        parts = urlsplit(url)
        self.host = parts.hostname
        self.port = parts.port
        self.sock = socket.create_connection((self.host, self.port), timeout=scaled(timeout))
        self.buffer = b""

    def request(
        self, method: str, url: str, http: str = "1.1", headers: dict | None = None, body: bytes | str = b""
    ) -> RawResponse:
        path = urlsplit(url)
        target = path.path + ("?" + path.query if path.query else "")
        if isinstance(body, str):
            body = body.encode("utf-8")
        lines = [f"{method} {target} HTTP/{http}", f"Host: {self.host}:{self.port}"]
        all_headers = dict(headers or {})
        if body or method == "POST":
            all_headers.setdefault("Content-Length", str(len(body)))
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return self.read_response()

    def send_only(self, method: str, url: str, http: str = "1.1", headers: dict | None = None) -> None:
        """Send a request and read nothing yet (a poll answers only when it has a frame)."""
        path = urlsplit(url)
        lines = [f"{method} {path.path} HTTP/{http}", f"Host: {self.host}:{self.port}", "Content-Length: 0"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def read_response(self) -> RawResponse:
        status_line = self.read_line()
        version, status, _ = status_line.split(" ", 2)
        headers_out: dict[str, str] = {}
        while True:
            line = self.read_line()
            if not line:
                break
            name, _, value = line.partition(":")
            headers_out.setdefault(name.strip().lower(), value.strip())
        return RawResponse(self, int(status), version.split("/")[1], headers_out)

    def recv_some(self) -> bytes:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        return self.sock.recv(65536)

    def read_line(self) -> str:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed while reading a line")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("latin-1")

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the end of the body")
            self.buffer += data
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def closed(self) -> bool:
        """Whether the server has closed the connection (waits briefly for it)."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
