"""Local stand-ins for the knowledge base's remote providers, speaking their real wire formats.

- `OpenAIStandIn`: an HTTP server (stdlib) answering POST /v1/embeddings and /v1/chat/completions as OpenAI does,
  recording every request (headers and JSON body) and able to fail with a chosen status.
- `HashEmbeddings`: a deterministic embedding provider of any model id and dimension, for tests of the bookkeeping
  around embeddings (re-embedding, dedupe counts) that must not depend on a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tollgate.rag.embeddings import Embeddings


def hash_vector(text: str, dimensions: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


class HashEmbeddings:
    provider = "test"

    def __init__(self, model_id: str = "hash-test", dimensions: int = 256) -> None:
        self.model_id = model_id
        self.dimensions = dimensions
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> Embeddings:
        self.calls.append(list(texts))
        return Embeddings([hash_vector(t, self.dimensions) for t in texts], sum(len(t.split()) for t in texts))


@dataclass
class OpenAIStandIn:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None
    answer: str = "Use POST /rag/search [1]."


@contextmanager
def openai_standin() -> Iterator[OpenAIStandIn]:
    state = OpenAIStandIn(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if state.fail_with is not None:
                self._send(state.fail_with, {"error": {"message": "stand-in failure", "type": "server_error"}})
            elif self.path == "/v1/embeddings":
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                dims = int(body.get("dimensions", 1536))
                data = [
                    {"object": "embedding", "index": i, "embedding": hash_vector(text, dims)}
                    for i, text in enumerate(inputs)
                ]
                tokens = sum(len(t.split()) for t in inputs)
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": list(reversed(data)),  # the API does not promise order: indexes do
                        "model": body["model"],
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    },
                )
            elif self.path == "/v1/chat/completions":
                self._send(
                    200,
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "model": body["model"] + "-2024-07-18",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": state.answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333},
                    },
                )
            else:
                self._send(404, {"error": {"message": "unknown path"}})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
