"""Embedding and answering adapters: the real local model, Bedrock through botocore's Stubber, OpenAI through a
local stand-in server speaking its wire format."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from tests.rag_standins import OpenAIStandIn, openai_standin
from tollgate.config import Settings
from tollgate.errors import ConfigurationError, EmbeddingUnavailable, LlmUnavailable
from tollgate.rag.embeddings import (
    LOCAL_DIMENSIONS,
    BedrockTitan,
    LocalMiniLM,
    OpenAIEmbeddings,
    build_embedding_provider,
)
from tollgate.rag.llm import SYSTEM_PROMPT, BedrockConverse, ExtractiveAnswerer, OpenAIChat, Passage, Turn


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


@pytest.fixture
def standin() -> Iterator[OpenAIStandIn]:
    with openai_standin() as server:
        yield server


def _bedrock() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


# --- the local model --------------------------------------------------------------------------------------------
def test_local_model_scores_a_paraphrase_above_an_unrelated_sentence(minilm: LocalMiniLM) -> None:
    # When a question, its paraphrase and an unrelated sentence are embedded
    question, paraphrase, unrelated = minilm.embed(
        ["How do I reset my password?", "I forgot my password, how can I change it?", "The weather in Paris is sunny."]
    ).vectors
    # Then the vectors are unit length, 384-dimensional, and the paraphrase is far closer than the unrelated text
    assert len(question) == LOCAL_DIMENSIONS
    assert all(math.isclose(_dot(v, v), 1.0, abs_tol=1e-5) for v in (question, paraphrase, unrelated))
    assert _dot(question, paraphrase) > 0.7
    assert _dot(question, unrelated) < 0.2


def test_local_model_vectors_do_not_depend_on_batch_padding(minilm: LocalMiniLM) -> None:
    # Given a short text embedded alone and in a batch with a much longer one (so it is padded)
    alone = minilm.embed(["credit balance"]).vectors[0]
    batched = minilm.embed(["credit balance", "a much longer sentence " * 20]).vectors[0]
    # Then the attention mask keeps the padding out of the mean: the same vector
    assert _dot(alone, batched) > 0.9999


def test_local_model_counts_tokens_and_truncates_long_text(minilm: LocalMiniLM) -> None:
    result = minilm.embed(["word " * 2000])
    assert len(result.vectors[0]) == LOCAL_DIMENSIONS
    assert result.tokens == 256  # truncated to the model's window
    assert minilm.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_local_provider_is_the_default_and_refuses_another_model_id() -> None:
    assert Settings(_env_file=None).embedding_provider == "local"
    with pytest.raises(ConfigurationError):
        build_embedding_provider(Settings(_env_file=None, embedding_model_id="other"))


# --- Bedrock Titan v2 -------------------------------------------------------------------------------------------
def test_bedrock_titan_sends_titan_v2_requests_and_normalises(minilm: LocalMiniLM) -> None:
    # Given a stubbed bedrock-runtime client answering Titan v2's response shape
    client = _bedrock()
    provider = BedrockTitan(client, dimensions=256)
    with Stubber(client) as stub:
        for text, raw in (("first", [3.0, 4.0] + [0.0] * 254), ("second", [0.0] * 255 + [2.0])):
            payload = json.dumps({"embedding": raw, "inputTextTokenCount": 2}).encode()
            stub.add_response(
                "invoke_model",
                {"body": StreamingBody(io.BytesIO(payload), len(payload)), "contentType": "application/json"},
                {
                    "modelId": "amazon.titan-embed-text-v2:0",
                    "body": json.dumps({"inputText": text, "dimensions": 256, "normalize": True}),
                    "contentType": "application/json",
                    "accept": "application/json",
                },
            )
        # When two texts are embedded
        result = provider.embed(["first", "second"])
        stub.assert_no_pending_responses()
    # Then one call per text was made with the Titan v2 body, and the vectors come back unit length
    assert result.vectors[0][:2] == [0.6, 0.8]
    assert result.vectors[1][-1] == 1.0
    assert result.tokens == 4
    assert provider.model_id == "amazon.titan-embed-text-v2:0" and provider.dimensions == 256


def test_bedrock_titan_failure_is_embedding_unavailable() -> None:
    client = _bedrock()
    with Stubber(client) as stub:
        stub.add_client_error("invoke_model", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(EmbeddingUnavailable) as caught:
            BedrockTitan(client).embed(["anything"])
    assert caught.value.details["provider"] == "bedrock"


def test_bedrock_titan_refuses_unsupported_dimensions() -> None:
    with pytest.raises(ConfigurationError):
        BedrockTitan(_bedrock(), dimensions=384)


# --- OpenAI embeddings --------------------------------------------------------------------------------------------
def test_openai_embeddings_speak_the_wire_format(standin: OpenAIStandIn) -> None:
    # Given the adapter pointed at the stand-in, at a reduced dimension
    provider = OpenAIEmbeddings("sk-test-123", dimensions=512, base_url=standin.base_url)
    # When two texts are embedded
    result = provider.embed(["alpha text", "beta"])
    # Then one batched request carried the key, the model, the inputs and the dimension
    (request,) = standin.requests
    assert request["path"] == "/v1/embeddings"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["body"] == {
        "model": "text-embedding-3-small",
        "input": ["alpha text", "beta"],
        "encoding_format": "float",
        "dimensions": 512,
    }
    # And the answer is put back in input order (by index), unit length, with the billed tokens
    assert len(result.vectors) == 2 and all(len(v) == 512 for v in result.vectors)
    assert math.isclose(_dot(result.vectors[0], result.vectors[0]), 1.0, abs_tol=1e-9)
    alone = provider.embed(["alpha text"]).vectors[0]
    assert _dot(alone, result.vectors[0]) > 0.999999
    assert result.tokens == 3


def test_openai_embeddings_failure_is_embedding_unavailable(standin: OpenAIStandIn) -> None:
    standin.fail_with = 500
    with pytest.raises(EmbeddingUnavailable) as caught:
        OpenAIEmbeddings("sk-test", base_url=standin.base_url).embed(["x"])
    assert caught.value.details == {"provider": "openai", "status": 500}
    assert len(standin.requests) == 2  # one retry on a 5xx


def test_openai_provider_needs_a_key() -> None:
    with pytest.raises(ConfigurationError):
        build_embedding_provider(Settings(_env_file=None, embedding_provider="openai"))


# --- answering models -------------------------------------------------------------------------------------------
PASSAGES = [
    Passage(1, "How do I search the knowledge base?", "POST /rag/search with {query}.", 0.82),
    Passage(2, "How much does a search cost?", "0.2 credits.", 0.61),
]


def test_bedrock_converse_sends_system_history_and_passages() -> None:
    # Given a stubbed Converse answer
    client = _bedrock()
    model = BedrockConverse(client, "anthropic.claude-3-haiku-20240307-v1:0", max_tokens=300)
    history = [Turn("user", "hi"), Turn("assistant", "hello")]
    with Stubber(client) as stub:
        stub.add_response(
            "converse",
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "Call POST /rag/search [1]."}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 210, "outputTokens": 9, "totalTokens": 219},
                "metrics": {"latencyMs": 120},
            },
            {
                "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                "system": [{"text": SYSTEM_PROMPT}],
                "messages": [
                    {"role": "user", "content": [{"text": "hi"}]},
                    {"role": "assistant", "content": [{"text": "hello"}]},
                    {"role": "user", "content": [{"text": _prompt("How to search?")}]},
                ],
                "inferenceConfig": {"maxTokens": 300, "temperature": 0.2},
            },
        )
        # When it answers
        completion = model.answer("How to search?", PASSAGES, history)
    # Then the text and the provider's token counts come back
    assert completion.text == "Call POST /rag/search [1]."
    assert (completion.input_tokens, completion.output_tokens) == (210, 9)
    assert completion.provider == "bedrock"


def _prompt(question: str) -> str:
    from tollgate.rag.llm import build_user_prompt

    return build_user_prompt(question, PASSAGES)


def test_bedrock_converse_failure_is_llm_unavailable() -> None:
    client = _bedrock()
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code="ModelNotReadyException", http_status_code=429)
        with pytest.raises(LlmUnavailable):
            BedrockConverse(client).answer("q", PASSAGES, [])


def test_openai_chat_speaks_the_wire_format(standin: OpenAIStandIn) -> None:
    model = OpenAIChat("sk-chat", base_url=standin.base_url, max_tokens=200)
    completion = model.answer("How to search?", PASSAGES, [Turn("user", "earlier")])
    (request,) = standin.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-chat"
    body = request["body"]
    assert body["model"] == "gpt-4o-mini" and body["max_completion_tokens"] == 200
    assert [m["role"] for m in body["messages"]] == ["system", "user", "user"]
    assert "[1] Q: How do I search the knowledge base?" in body["messages"][-1]["content"]
    assert completion.text == standin.answer
    assert (completion.input_tokens, completion.output_tokens) == (321, 12)
    assert completion.model == "gpt-4o-mini-2024-07-18"


def test_openai_chat_failure_is_llm_unavailable(standin: OpenAIStandIn) -> None:
    standin.fail_with = 401
    with pytest.raises(LlmUnavailable):
        OpenAIChat("bad", base_url=standin.base_url).answer("q", PASSAGES, [])
    assert len(standin.requests) == 1  # a 4xx is not retried


def test_extractive_answer_cites_the_best_passage_and_lists_related() -> None:
    completion = ExtractiveAnswerer().answer("How to search?", PASSAGES, [])
    assert completion.text.startswith("POST /rag/search with {query}. [1]")
    assert "How much does a search cost? [2]" in completion.text
    assert completion.input_tokens > 0 and completion.output_tokens > 0
    empty = ExtractiveAnswerer().answer("Unknown?", [], [])
    assert "does not cover" in empty.text
