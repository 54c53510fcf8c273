"""The backend interface every inference worker implements.

A backend takes a :class:`GenerationRequest` (a raw prompt or chat messages plus sampling parameters) and either
returns a whole :class:`GenerationResult` or streams :class:`StreamDelta` pieces ending with one whose
``finish_reason`` is set and which carries the :class:`Usage`.

Errors a backend raises:
- :class:`BackendConnectError` before anything was produced (the router may retry on another endpoint);
- :class:`BackendTimeout` when the upstream did not answer in time (connect, first byte or stream idle);
- :class:`BackendError` for anything else (garbage answer, connection lost mid-stream, 5xx).
- :class:`BackendInputError` when the input cannot be served (prompt longer than the context): a 4xx.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    params: SamplingParams
    prompt: str | None = None  # raw text (completions, TGI generate)
    messages: list[dict[str, Any]] | None = None  # chat: [{"role": ..., "content": str}]
    upstream_model: str | None = None  # model name to send upstream (openai backends)
    #: sampling parameters the client left out ("temperature", "top_p", "max_tokens"): the inference service
    #: fills them from the model's defaults before anything else reads ``params``
    omitted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt or messages")


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    #: the registry version that produced it (set by the router; None for routes without a version)
    model_version: str | None = None


@dataclass(slots=True)
class StreamDelta:
    text: str = ""
    finish_reason: FinishReason | None = None  # set on the last delta only
    usage: Usage | None = None  # set on the last delta only
    model_version: str | None = None  # set by the router on every delta (one version per stream)
    pieces: int = 1  # upstream events joined into ``text`` (the tokens sent, for a stream that fails before usage)


class BackendError(Exception):
    """The backend failed after it may have started producing output."""


class BackendConnectError(BackendError):
    """Nothing was sent or produced: safe to retry on another endpoint."""


class BackendTimeout(BackendError):
    """Connect, first-byte or stream-idle deadline passed."""


class BackendInputError(Exception):
    """The request cannot be served by this model (e.g. prompt longer than its context)."""


class Backend(abc.ABC):
    """One inference endpoint (an embedded model, one TGI server, one OpenAI-compatible server)."""

    name: str
    #: context window in tokens when known (None: unknown, the upstream decides)
    context_length: int | None = None

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Async generator; closing it early (client gone) must cancel the generation."""

    @abc.abstractmethod
    async def health(self) -> bool:
        """True when the endpoint can take work now (active health check)."""

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt size in tokens; exact where the backend has the tokenizer, else an estimate."""
        text = request.prompt if request.prompt is not None else _messages_text(request.messages or [])
        return max(1, len(text) // 4)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights / open connections."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def _messages_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)
