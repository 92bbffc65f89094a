"""A local server that behaves like vLLM serving Qwen2-VL, for the chat-backend tests.

:class:`QwenLikeServer` serves the OpenAI chat-completions API on 127.0.0.1 (port 0) with aiohttp,
in a background thread, and reproduces what the MLLM backends meet on real servers:

* image checks as in Qwen2-VL's processor: a side under 28 pixels or an aspect ratio over 200 is
  HTTP 400 with vLLM's error body; each 28x28 block is a prompt token, and a prompt over
  ``max_model_len`` tokens is HTTP 400 "maximum context length"; a body over ``max_body`` bytes is
  HTTP 413;
* ``logprobs`` / ``top_logprobs`` on request, in the OpenAI shape: the first token's yes/no
  variants give the reply's own answer the probability ``p_answer``;
* ``GET /v1/models``;
* behaviours chosen per request (``mode``, or a queue of modes for the next requests):
  ``answer``, ``slow`` (answers after ``delay`` s), ``rate-limit`` (429 with ``Retry-After``),
  ``error`` (HTTP 500), ``trickle`` (the body one byte per ``trickle_interval`` s), ``silent``
  (accepts, never answers), ``malformed`` (truncated JSON), ``empty`` (an empty 200 body),
  ``null-message``, ``no-choices``, ``no-logprobs-param`` (400 when logprobs are requested).

The answers come from a ``responder(body, images) -> str`` given by the test.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from aiohttp import web
from PIL import Image

FACTOR = 28  # Qwen2-VL: 14-pixel patches merged 2x2
MODES = ("answer", "slow", "rate-limit", "error", "trickle", "silent", "malformed", "empty", "null-message",
         "no-choices", "no-logprobs-param")


@dataclass
class Seen:
    """One chat request as the server saw it."""

    body: dict
    images: list[tuple[int, int, int]]  # (width, height, bytes) of each image received
    mode: str
    at: float = field(default_factory=time.monotonic)
    disconnected_at: float | None = None  # when the client closed the connection mid-answer

    @property
    def purpose(self) -> str:
        """What the backend asked: ``person``, ``verify``, ``ask`` or ``merge`` (text only)."""
        if not self.images:
            return "merge"
        text = self.text
        if "show a person" in text:
            return "person"
        return "verify" if "yes or no" in text.lower() else "ask"

    @property
    def text(self) -> str:
        user = [m for m in self.body.get("messages", []) if m.get("role") == "user"][-1]
        content = user["content"]
        if isinstance(content, str):
            return content
        return "\n".join(b["text"] for b in content if b.get("type") == "text")


def _error(status: int, message: str, kind: str = "BadRequestError", headers: dict | None = None) -> web.Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.json_response(body, status=status, headers=headers)


class QwenLikeServer:
    """See the module docstring. ``url`` is the ``/v1`` base URL; ``requests`` the chat requests seen."""

    def __init__(self, responder: Callable[[dict, list[Image.Image]], str], model: str = "Qwen/Qwen2-VL-7B-Instruct",
                 max_model_len: int = 4096, max_body: int = 8 * 1024 * 1024, p_answer: float = 0.8,
                 delay: float = 1.0, retry_after: float = 1.0, trickle_interval: float = 0.2):
        self.responder = responder
        self.model = model
        self.max_model_len = max_model_len
        self.max_body = max_body
        self.p_answer = p_answer
        self.delay = delay
        self.retry_after = retry_after
        self.trickle_interval = trickle_interval
        self.mode = "answer"
        self._queue: list[str] = []
        self.requests: list[Seen] = []
        self.model_requests = 0
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qwen-like-server", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}/v1"

    # -- control --------------------------------------------------------------------------------

    def queue(self, *modes: str) -> None:
        """Use these modes for the next requests, in order; then ``mode`` again."""
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown modes {unknown}")
        with self._lock:
            self._queue.extend(modes)

    @property
    def chat_requests(self) -> int:
        return len(self.requests)

    def count(self, purpose: str) -> int:
        """Chat requests seen for one purpose (see :attr:`Seen.purpose`)."""
        return sum(1 for r in self.requests if r.purpose == purpose)

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # -- the app ----------------------------------------------------------------------------------

    async def _start(self) -> int:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return self._runner.addresses[0][1]

    async def _models(self, request: web.Request) -> web.Response:
        self.model_requests += 1
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": self.max_model_len}]})

    def _next_mode(self) -> str:
        with self._lock:
            return self._queue.pop(0) if self._queue else self.mode

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1  # the loop thread is the only writer
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # over client_max_size: aiohttp answers 413 itself
        body = json.loads(raw)
        images, decoded = [], []
        for m in body.get("messages", []):
            if isinstance(m.get("content"), list):
                for block in m["content"]:
                    if block.get("type") == "image_url":
                        url = block["image_url"]["url"]
                        data = base64.b64decode(url.split(",", 1)[1])
                        try:
                            im = Image.open(io.BytesIO(data))
                            im.load()
                        except Exception:
                            return _error(400, "Invalid image: cannot identify image file")
                        images.append((im.width, im.height, len(data)))
                        decoded.append(im.convert("RGB"))
        mode = self._next_mode()
        seen = Seen(body, images, mode)
        with self._lock:
            self.requests.append(seen)
        # the processor's checks (transformers' Qwen2-VL smart_resize)
        for w, h, _ in images:
            if min(w, h) < FACTOR:
                return _error(400, f"height:{h} or width:{w} must be larger than factor:{FACTOR}")
            if max(w, h) / min(w, h) > 200:
                return _error(400, f"absolute aspect ratio must be smaller than 200, got {max(w, h) / min(w, h)}")
        tokens = sum(math.ceil(w / FACTOR) * math.ceil(h / FACTOR) for w, h, _ in images) + len(seen.text) // 4 + 20
        if tokens + int(body.get("max_tokens") or 0) > self.max_model_len:
            return _error(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {tokens} tokens ({tokens} in the messages, 0 in the completion). Please "
                               "reduce the length of the messages or completion.")
        if mode == "rate-limit":
            return _error(429, "Too many requests", "RateLimitError", {"Retry-After": f"{self.retry_after:g}"})
        if mode == "error":
            return _error(500, "the GPU caught fire", "InternalServerError")
        if mode == "no-logprobs-param" and body.get("logprobs"):
            return _error(400, "logprobs is not supported by this server")
        if mode == "silent":
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)
            seen.disconnected_at = time.monotonic()
            return web.Response(status=499)
        if mode == "slow":
            await asyncio.sleep(self.delay)
        text = self.responder(body, decoded)
        payload = self._completion(body, text)
        if mode == "malformed":
            return web.Response(body=payload[: len(payload) // 2], content_type="application/json")
        if mode == "empty":
            return web.Response(body=b"", content_type="application/json")
        if mode == "null-message":
            broken = json.loads(payload)
            broken["choices"][0]["message"] = None
            return web.json_response(broken)
        if mode == "no-choices":
            broken = json.loads(payload)
            broken["choices"] = []
            return web.json_response(broken)
        if mode == "trickle":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(payload)
            await response.prepare(request)
            try:
                for i in range(len(payload)):
                    await response.write(payload[i:i + 1])
                    await asyncio.sleep(self.trickle_interval)
                    if request.transport is None or request.transport.is_closing():
                        raise ConnectionResetError
            except (ConnectionResetError, RuntimeError):
                seen.disconnected_at = time.monotonic()
            return response
        return web.Response(body=payload, content_type="application/json")

    # -- the answer -------------------------------------------------------------------------------

    def _logprobs(self, text: str, k: int) -> dict:
        """OpenAI-shaped log-probabilities. The first token's alternatives: p(yes) on the yes
        variants ("Yes" 3/4, " yes" 1/4), 1 - p(yes) on the no variants ("No" 9/10, " no" 1/10),
        all scaled by 0.98 with 0.02 left to "The"; p(yes) is ``p_answer`` when the reply starts
        with yes, 1 - ``p_answer`` when it starts with no (the model's answer is its likelier one)."""
        words = re.findall(r"\w+|[^\w\s]", text) or [text]
        first = words[0]
        p = 1.0 - self.p_answer if first.lower() == "no" else self.p_answer
        alts = [("Yes", 0.98 * p * 0.75), (" yes", 0.98 * p * 0.25), ("No", 0.98 * (1 - p) * 0.9),
                (" no", 0.98 * (1 - p) * 0.1), ("The", 0.02)]
        alts = [(t, math.log(q)) for t, q in alts if q > 0][:k]
        chosen = next((lp for t, lp in alts if t == first), math.log(0.02))
        content = [{"token": first, "logprob": chosen, "bytes": list(first.encode()),
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts]}]
        for w in words[1:]:
            content.append({"token": w, "logprob": -0.01, "bytes": list(w.encode()),
                            "top_logprobs": [{"token": w, "logprob": -0.01, "bytes": list(w.encode())}]})
        return {"content": content}

    def _completion(self, body: dict, text: str) -> bytes:
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                        "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs"):
            choice["logprobs"] = self._logprobs(text, int(body.get("top_logprobs") or 1))
        return json.dumps({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model), "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }).encode()


@contextmanager
def server_pool(responder: Callable[[dict, list[Image.Image]], str]) -> Iterator[Callable[..., QwenLikeServer]]:
    """A starter of :class:`QwenLikeServer` s (``start(mode="answer", responder=..., **kw)``;
    ``responder`` defaults to the one given here); every server started is closed on exit."""
    servers: list[QwenLikeServer] = []

    def start(mode: str = "answer", **kw) -> QwenLikeServer:
        server = QwenLikeServer(kw.pop("responder", responder), **kw)
        server.mode = mode
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for s in servers:
            s.close()


class ClosingServer:
    """Accepts TCP connections on 127.0.0.1 (port 0) and closes each at once, counting them: a
    server that is down behind a listening socket."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _yes_model(body: dict, images: list) -> str:
    """A model that says yes to every question and answers attribute questions with "not visible"."""
    user = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]
    if isinstance(user, str):
        match = re.search(r'"(.*?)"', user)
        return match.group(1) if match else "A person."
    text = " ".join(b.get("text", "") for b in user if b.get("type") == "text")
    if "yes or no" in text.lower():
        return "Yes."
    count = len(re.findall(r"^\d+\. ", text, re.M))
    return "\n".join(f"{n}. Not visible" for n in range(1, count + 1))


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.mllm_server --mode silent``: serve until Ctrl-C (to try a CLI against it)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.mllm_server", description=main.__doc__)
    p.add_argument("--mode", choices=MODES, default="answer", help="how to answer every request (default %(default)s)")
    p.add_argument("--delay", type=float, default=1.0, help="slow: seconds before answering")
    p.add_argument("--retry-after", type=float, default=1.0, help="rate-limit: the Retry-After header")
    p.add_argument("--trickle-interval", type=float, default=1.0, help="trickle: seconds between bytes")
    args = p.parse_args(argv)
    server = QwenLikeServer(_yes_model, delay=args.delay, retry_after=args.retry_after,
                            trickle_interval=args.trickle_interval)
    server.mode = args.mode
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
