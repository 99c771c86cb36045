"""Answering models behind one interface: Bedrock Converse, OpenAI chat completions, and the local extractive
answerer (no model: it answers with the best retrieved chunks themselves).

Every answer reports the tokens it used: the provider's own counts for an LLM, estimates for the extractive one.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

from tollgate.config import Settings, get_settings
from tollgate.errors import ConfigurationError, LlmUnavailable
from tollgate.rag.embeddings import post_json
from tollgate.rag.text import estimate_tokens

BEDROCK_DEFAULT_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
EXTRACTIVE_MODEL = "extractive"


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk given to the model, numbered [n] in the prompt."""

    number: int
    question: str | None
    text: str
    similarity: float


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    model: str
    provider: str


class AnswerModel(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    def answer(self, question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> Completion: ...


SYSTEM_PROMPT = (
    "You answer questions about the product using only the numbered passages of its knowledge base given with "
    "the question. Cite the passages you used as [1], [2], ... right after the sentence they support. If the "
    "passages do not contain the answer, say that the knowledge base does not cover it; never invent facts."
)


def build_user_prompt(question: str, passages: Sequence[Passage]) -> str:
    if passages:
        context = "\n\n".join(
            f"[{p.number}] " + (f"Q: {p.question}\nA: " if p.question else "") + p.text for p in passages
        )
    else:
        context = "(no passage matched)"
    return f"Knowledge base passages:\n{context}\n\nQuestion: {question}"


def estimate_prompt_tokens(question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> int:
    """What a prompt will cost in input tokens (an upper-leaning estimate, for the hold)."""
    text = SYSTEM_PROMPT + build_user_prompt(question, passages) + "".join(t.content for t in history)
    return estimate_tokens(text) + 8 * (len(history) + 2)


class ExtractiveAnswerer:
    """No LLM: the answer is the best passage's answer, with the next ones offered as related, each cited."""

    provider = "local"
    model_id = EXTRACTIVE_MODEL

    def answer(self, question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> Completion:
        if not passages:
            text = "The knowledge base does not cover this question."
        else:
            best = passages[0]
            text = f"{best.text} [{best.number}]"
            related = [p for p in passages[1:] if p.question]
            if related:
                text += "\n\nRelated: " + "; ".join(f"{p.question} [{p.number}]" for p in related)
        return Completion(
            text=text,
            input_tokens=estimate_tokens(build_user_prompt(question, passages)),
            output_tokens=estimate_tokens(text),
            model=self.model_id,
            provider=self.provider,
        )


def _messages(question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = [(t.role, t.content) for t in history]
    turns.append(("user", build_user_prompt(question, passages)))
    return turns


class BedrockConverse:
    provider = "bedrock"

    def __init__(self, client: Any, model_id: str = BEDROCK_DEFAULT_MODEL, max_tokens: int = 512) -> None:
        self._client = client
        self.model_id = model_id
        self._max_tokens = max_tokens

    def answer(self, question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> Completion:
        from botocore.exceptions import BotoCoreError, ClientError

        messages = [
            {"role": role, "content": [{"text": text}]} for role, text in _messages(question, passages, history)
        ]
        try:
            response = self._client.converse(
                modelId=self.model_id,
                system=[{"text": SYSTEM_PROMPT}],
                messages=messages,
                inferenceConfig={"maxTokens": self._max_tokens, "temperature": 0.2},
            )
        except (BotoCoreError, ClientError) as exc:
            raise LlmUnavailable(
                "the answering model failed", details={"provider": "bedrock", "error": type(exc).__name__}
            ) from exc
        blocks = response.get("output", {}).get("message", {}).get("content", [])
        text = "".join(block.get("text", "") for block in blocks).strip()
        usage = response.get("usage", {})
        if not text:
            raise LlmUnavailable("the answering model returned no text", details={"provider": "bedrock"})
        return Completion(
            text=text,
            input_tokens=int(usage.get("inputTokens", 0)),
            output_tokens=int(usage.get("outputTokens", 0)),
            model=self.model_id,
            provider=self.provider,
        )


class OpenAIChat:
    provider = "openai"

    def __init__(
        self,
        api_key: str,
        *,
        model_id: str = OPENAI_DEFAULT_MODEL,
        base_url: str = "https://api.openai.com/v1",
        max_tokens: int = 512,
        timeout: float = 10.0,
    ) -> None:
        self._api_key = api_key
        self._url = base_url.rstrip("/") + "/chat/completions"
        self.model_id = model_id
        self._max_tokens = max_tokens
        self._timeout = timeout

    def answer(self, question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> Completion:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        messages += [{"role": role, "content": text} for role, text in _messages(question, passages, history)]
        body = {
            "model": self.model_id,
            "messages": messages,
            "max_completion_tokens": self._max_tokens,
            "temperature": 0.2,
        }
        try:
            payload = post_json(self._url, body, self._api_key, self._timeout)
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise LlmUnavailable(
                "the answering model failed", details={"provider": "openai", "status": getattr(exc, "code", None)}
            ) from exc
        choices = payload.get("choices") or []
        text = str((choices[0].get("message") or {}).get("content") or "").strip() if choices else ""
        if not text:
            raise LlmUnavailable("the answering model returned no text", details={"provider": "openai"})
        usage = payload.get("usage") or {}
        return Completion(
            text=text,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            model=str(payload.get("model") or self.model_id),
            provider=self.provider,
        )


def build_answer_model(settings: Settings) -> AnswerModel:
    if settings.llm_provider == "extractive":
        return ExtractiveAnswerer()
    if settings.llm_provider == "bedrock":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "bedrock-runtime",
            region_name=settings.bedrock_region or settings.aws_region,
            config=Config(read_timeout=settings.llm_timeout_seconds, retries={"max_attempts": 2}),
        )
        return BedrockConverse(
            client, settings.llm_model_id or BEDROCK_DEFAULT_MODEL, max_tokens=settings.llm_max_output_tokens
        )
    if settings.openai_api_key is None:
        raise ConfigurationError("LLM_PROVIDER=openai needs OPENAI_API_KEY")
    return OpenAIChat(
        settings.openai_api_key.get_secret_value(),
        model_id=settings.llm_model_id or OPENAI_DEFAULT_MODEL,
        base_url=settings.openai_base_url,
        max_tokens=settings.llm_max_output_tokens,
        timeout=settings.llm_timeout_seconds,
    )


@lru_cache(maxsize=1)
def get_answer_model() -> AnswerModel:
    return build_answer_model(get_settings())
