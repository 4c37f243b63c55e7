"""The calls console's files at `/console/`: a web page built from console/ (TypeScript,
esbuild) into calls_server/console_assets/, shipped in the wheel, served from memory.

The page is a client of the public API like any other: it signs in with an organization's
key pair and sends it on each API request. Its files hold no secret, so they are served to
anyone, before the API's auth. See docs/console.md.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

ASSETS = Path(__file__).parent / "console_assets"
PREFIX = "/console"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
# esbuild names built files `name-HASH.ext`: a name that changes with the content may be
# kept by a browser for good; index.html (which names them) is checked on every load.
_HASHED = re.compile(r"-[A-Z0-9]{8}\.[a-z]+$")
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"
# The page loads nothing from another origin; recordings may be on another host (a bucket,
# the sandbox's address), so media may come from anywhere.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"media-src * data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'none'; object-src 'none'"
)
_COMPRESSED_AT_LEAST = 1024  # bytes: smaller files are sent as they are


@dataclass(frozen=True)
class ConsoleFile:
    """One file of the console, held in memory with its headers and gzip form."""

    body: bytes
    gzipped: bytes | None
    content_type: bytes
    cache_control: bytes
    etag: bytes

    @classmethod
    def read(cls, path: Path) -> ConsoleFile:
        """The file at `path`, with headers following its name and content."""
        body = path.read_bytes()
        compressible = path.suffix in (".html", ".js", ".css", ".svg")
        return cls(
            body=body,
            gzipped=(
                gzip.compress(body, mtime=0)
                if compressible and len(body) >= _COMPRESSED_AT_LEAST
                else None
            ),
            content_type=CONTENT_TYPES.get(path.suffix, b"application/octet-stream"),
            cache_control=IMMUTABLE if _HASHED.search(path.name) else REVALIDATE,
            etag=b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
        )


def console_files(folder: Path = ASSETS) -> dict[str, ConsoleFile]:
    """The console's files by URL path (`/console/` for index.html), read from `folder`."""
    if not folder.is_dir():  # not built: nothing to serve
        return {}
    files = {
        f"{PREFIX}/{path.name}": ConsoleFile.read(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }
    if f"{PREFIX}/index.html" in files:
        files[f"{PREFIX}/"] = files[f"{PREFIX}/index.html"]
    return files


class ConsoleFiles:
    """ASGI middleware answering GET and HEAD under `/console/` with the console's files
    (`/console` is redirected to `/console/`, any other path there is 404); every other
    request goes on to `app`. The files are read once, when the app is built."""

    def __init__(self, app: ASGIApp, folder: Path = ASSETS) -> None:
        self.app = app
        self.files = console_files(folder)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            await _answer(send, 405, [(b"allow", b"GET, HEAD"), _TEXT], b"Method Not Allowed\n")
            return
        if path == PREFIX:
            await _answer(send, 308, [(b"location", f"{PREFIX}/".encode())])
            return
        file = self.files.get(path)
        if file is None:
            await _answer(send, 404, [_TEXT], b"Not Found\n")
            return
        request = dict(scope["headers"])
        headers = [
            (b"cache-control", file.cache_control),
            (b"etag", file.etag),
            (b"vary", b"accept-encoding"),
        ]
        if request.get(b"if-none-match") == file.etag:
            await _answer(send, 304, headers)
            return
        body = file.body
        if file.gzipped is not None and b"gzip" in request.get(b"accept-encoding", b""):
            body = file.gzipped
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-type", file.content_type))
        await _answer(send, 200, headers, body, send_body=method == "GET")


_TEXT = (b"content-type", b"text/plain; charset=utf-8")


async def _answer(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    send_body: bool = True,
) -> None:
    """Send one whole answer (HEAD: its headers only), with the headers every console
    answer carries."""
    headers = [
        *headers,
        *([] if status == 304 else [(b"content-length", str(len(body)).encode())]),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", CONTENT_SECURITY_POLICY),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if send_body else b""})
