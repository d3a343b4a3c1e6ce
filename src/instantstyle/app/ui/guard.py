"""What keeps one visitor from hurting the server: the painters' blob route held to what a painting needs, a back-off
on failed logins, a cap on component requests, and gradio's uploads removed when the server is stopped by SIGTERM as
by Ctrl-C.

gradio's image editor sends its strokes ahead of the event (``POST gradio_api/component_server`` with
``fn_name=accept_blobs``): each blob is kept under an id the browser picks until an event uses it, and its
``index`` makes a list that long. ``guard_painter`` replaces that function on each editor of the page with one that
refuses an index past the layers the page paints, a blob over ``MAX_BLOB_BYTES``, and more than
``MAX_PENDING_PER_SESSION`` / ``MAX_PENDING_PER_CLIENT`` waiting ids, keeps ``MAX_PENDING_BYTES`` in all, and forgets
what no event used within ``PENDING_TTL_S``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from fastapi import HTTPException

#: The layers a painter of this page sends (``layers=False``: one layer of strokes).
PAINTED_LAYERS = 1
#: One blob (a layer, background or composite PNG) at most; a painted 40-megapixel mask compresses far below.
MAX_BLOB_BYTES = 25 * 1024 * 1024
#: Waiting paintings: per browser session, per client address, and bytes in all (over it: refused until some are
#: used or expire).
MAX_PENDING_PER_SESSION, MAX_PENDING_PER_CLIENT = 4, 8
MAX_PENDING_BYTES = 256 * 1024 * 1024
#: A painting no event used within this many seconds is forgotten.
PENDING_TTL_S = 600.0
#: The most bytes one ``component_server`` request may carry (one blob plus its form fields).
MAX_COMPONENT_REQUEST = MAX_BLOB_BYTES + 64 * 1024
#: Failed logins a client may make before each further try waits (1 s, doubling to ``LOGIN_MAX_WAIT_S``).
LOGIN_FREE_TRIES, LOGIN_MAX_WAIT_S = 5, 300.0
#: Clients whose failed logins are remembered (the oldest is forgotten first).
LOGIN_CLIENTS = 10_000

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class _Pending:
    at: float
    session: str
    client: str
    size: int


class PaintGuard:
    """The waiting paintings of every painter of one page, with their owners, sizes and ages."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._stores: dict[int, dict[str, Any]] = {}

    def _forget_used_and_old(self, now: float) -> None:
        for key, entry in list(self._pending.items()):
            store = self._stores[key[0]]
            if key[1] not in store:  # an event used it (gradio pops it)
                del self._pending[key]
            elif now - entry.at > PENDING_TTL_S:
                store.pop(key[1], None)
                del self._pending[key]

    def accept(self, editor: Any, data: Any, request: gr.Request) -> None:
        """gradio's ``accept_blobs``, held to the limits (``HTTPException`` 400/413/429 otherwise)."""
        from gradio.components.image_editor import EditorDataBlobs

        fields, files = getattr(data, "data", None), getattr(data, "files", None)
        if not isinstance(fields, dict) or not isinstance(files, list) or len(files) != 1:
            raise HTTPException(400, "one blob per request")
        kind, blob_id, raw_index = fields.get("type"), fields.get("id"), fields.get("index")
        if kind not in ("background", "layer", "composite") or not isinstance(blob_id, str) or not blob_id \
                or len(blob_id) > 64:
            raise HTTPException(400, "a blob needs a type (background, layer, composite) and a short id")
        index = 0
        if kind == "layer":
            try:
                index = int(str(raw_index))
            except (TypeError, ValueError):
                raise HTTPException(400, "a layer blob needs its index") from None
            if not 0 <= index < PAINTED_LAYERS:
                raise HTTPException(400, f"layer index {index}: this page paints {PAINTED_LAYERS} layer(s)")
        blob = files[0][1]
        if not isinstance(blob, bytes) or len(blob) > MAX_BLOB_BYTES:
            raise HTTPException(413, f"a painting's image is at most {MAX_BLOB_BYTES // 2**20} MB")
        session = str(fields.get("session_hash") or getattr(request, "session_hash", "") or "")
        client = str(getattr(getattr(request, "client", None), "host", "") or "")
        store: dict[str, Any] = editor.blob_storage
        key = (id(editor), blob_id)
        now = self._clock()
        with self._lock:
            self._stores[id(editor)] = store
            self._forget_used_and_old(now)
            mine = self._pending.get(key)
            if mine is not None and (mine.session, mine.client) != (session, client):
                raise HTTPException(400, "that painting belongs to another visitor")
            if mine is None:
                by_session = sum(p.session == session for p in self._pending.values())
                by_client = sum(p.client == client for p in self._pending.values())
                if by_session >= MAX_PENDING_PER_SESSION or by_client >= MAX_PENDING_PER_CLIENT:
                    raise HTTPException(429, "too many paintings waiting; generate (or wait) first")
            held = sum(p.size for p in self._pending.values()) - (mine.size if mine else 0)
            size = (mine.size if mine else 0) + len(blob)
            if held + size > MAX_PENDING_BYTES:
                raise HTTPException(429, "the server holds too many paintings; try again in a few minutes")
            current = store.get(blob_id) or EditorDataBlobs(background=None, layers=[], composite=None)
            if kind == "layer":
                current.layers.extend([None] * (index + 1 - len(current.layers)))
                current.layers[index] = blob
            else:
                setattr(current, kind, blob)
            store[blob_id] = current
            self._pending[key] = _Pending(now, session, client, size)

    def held_bytes(self) -> int:
        with self._lock:
            self._forget_used_and_old(self._clock())
            return sum(p.size for p in self._pending.values())


def guard_painter(editor: Any, guard: PaintGuard) -> Any:
    """Route an image editor's blob uploads through ``guard`` (patched on the instance: gradio's component server
    looks the function up on the component and calls only those marked as server functions)."""

    def accept_blobs(data: Any, request: gr.Request) -> None:
        guard.accept(editor, data, request)

    setattr(accept_blobs, "_is_server_fn", True)  # noqa: B010  (gradio's mark, as its ``@server`` sets it)
    setattr(editor, "accept_blobs", accept_blobs)  # noqa: B010
    return editor


class LoginThrottle:
    """Failed logins per client address: after ``LOGIN_FREE_TRIES``, each further try waits 1 s, then 2, 4, ... up
    to ``LOGIN_MAX_WAIT_S``; a success forgets the client."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds the client must wait before its next try (0: it may try now)."""
        with self._lock:
            _, until = self._failed.get(client, (0, 0.0))
        return max(0.0, until - self._clock())

    def failed(self, client: str) -> None:
        with self._lock:
            count, _ = self._failed.pop(client, (0, 0.0))
            count += 1
            over = count - LOGIN_FREE_TRIES
            wait = 0.0 if over <= 0 else min(LOGIN_MAX_WAIT_S, 2.0 ** (over - 1))
            self._failed[client] = (count, self._clock() + wait)
            while len(self._failed) > LOGIN_CLIENTS:
                self._failed.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failed.pop(client, None)


class Guard:
    """ASGI middleware in front of gradio: failed logins back off (``LoginThrottle``) and a component request is
    held to ``MAX_COMPONENT_REQUEST`` bytes (gradio reads up to 1000 files of one into memory)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], throttle: LoginThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        if path.endswith("/component_server"):
            return await self._capped(scope, receive, send)
        if path == "/login" or path.endswith("/login") and not path.endswith("gradio_api/login"):
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > MAX_COMPONENT_REQUEST:
            return await _refuse(send, 413, "request too large")
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_COMPONENT_REQUEST:
                raise HTTPException(413, "request too large")
            return message

        await self.app(scope, counted, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = (scope.get("client") or ("", 0))[0]
        wait = self.throttle.wait(client)
        if wait > 0:
            return await _refuse(send, 429, f"too many failed logins; try again in {wait:.0f} s",
                                 [(b"retry-after", str(max(1, round(wait))).encode())])
        status = 0

        async def noted(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, noted)
        if status == 200:
            self.throttle.succeeded(client)
        elif 400 <= status < 500:
            self.throttle.failed(client)


async def _refuse(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def stop_on_sigterm() -> None:
    """Make SIGTERM (systemd, docker, ``kill``) stop the server as Ctrl-C does, so gradio deletes its copies of the
    uploads on the way out (it does on KeyboardInterrupt only). Main thread only, as signal handlers are."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
