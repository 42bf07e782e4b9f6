"""A small OpenAI-compatible vision chat endpoint for tests (real HTTP on 127.0.0.1).

It answers ``POST /v1/chat/completions`` like vLLM or Ollama do, with a deterministic
answer derived from the request: the image of the data URL is decoded and described by
its dominant colour and size, e.g. ``{"caption": "a red picture 64x48", "tags": ["red",
"wide"]}``. Images that are mostly magenta are refused with 400 (a content refusal), and
``fail_next`` answers 503 that many times first (an endpoint that is restarting).
``delay_s`` makes every answer that much slower (a slow VLM); ``hold`` keeps requests
waiting until that many have been in flight at once, then lets every request pass (a
deterministic concurrency check: a tail of fewer requests never waits);
``max_in_flight`` is the most requests it ever had in flight at once.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "white": (250, 250, 250),
           "black": (10, 10, 10), "yellow": (240, 220, 20), "magenta": (230, 20, 230)}


def colour_name(img: Image.Image) -> str:
    mean = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((mean - np.array(COLOURS[c])) ** 2)))


class VisionEndpoint:
    """Start with ``with VisionEndpoint() as ep:``; ``ep.url`` is the base URL (``.../v1``)."""

    def __init__(self, model: str = "test-vl") -> None:
        self.model = model
        self.requests: list[dict] = []
        self.fail_next = 0
        self.delay_s = 0.0
        self.hold = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint._changed:
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    endpoint._changed.notify_all()
                    # held until `hold` requests have been in flight at once, then every request
                    # passes: a tail of fewer than `hold` never waits (60 s is a safety bound only:
                    # a caller that never reaches `hold` is seen in max_in_flight)
                    endpoint._changed.wait_for(lambda: endpoint.max_in_flight >= endpoint.hold, timeout=60)
                try:
                    if endpoint.delay_s:
                        time.sleep(endpoint.delay_s)
                    status, answer = endpoint.answer(self.path, body, self.headers.get("Authorization", ""))
                finally:
                    with endpoint._changed:
                        endpoint.in_flight -= 1
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, path: str, body: bytes, auth: str) -> tuple[int, dict]:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, {"error": {"message": "model is loading"}}
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        try:
            doc = json.loads(body)
            parts = doc["messages"][0]["content"]
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            prompt = next(p["text"] for p in parts if p["type"] == "text")
            img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        except (ValueError, KeyError, StopIteration, IndexError, TypeError) as exc:
            return 400, {"error": {"message": f"bad request: {exc}"}}
        with self._lock:
            self.requests.append({"model": doc.get("model"), "size": img.size, "prompt": prompt, "auth": auth})
        colour = colour_name(img)
        if colour == "magenta":
            return 400, {"error": {"message": "content refused"}}
        w, h = img.size
        content = json.dumps({"caption": f"a {colour} picture {w}x{h}",
                              "tags": [colour, "wide" if w > h else "tall" if h > w else "square"]})
        return 200, {"id": "chatcmpl-test", "object": "chat.completion", "model": doc.get("model"),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": f"```json\n{content}\n```"}}]}

    def __enter__(self) -> "VisionEndpoint":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
