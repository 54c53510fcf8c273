"""Request bodies of the OpenAI-compatible API (msgspec: strict types, clear messages on bad input)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.errors import BadRequest

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Stop = str | Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]], msgspec.Meta(max_length=4)]


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[Any] | None = None  # TGI's client always sends it (null)


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: ModelName
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None
    stop: Stop | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: PositiveInt | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> None:
        """Parameters we accept in the schema but cannot honour: refuse them loudly rather than ignore them."""
        if self.n not in (None, 1):
            raise BadRequest("only n=1 is supported", param="n")
        if self.presence_penalty or self.frequency_penalty:
            raise BadRequest("presence_penalty and frequency_penalty are not supported", param="presence_penalty")
        if self.logprobs:
            raise BadRequest("logprobs are not supported", param="logprobs")
        if self.logit_bias:
            raise BadRequest("logit_bias is not supported", param="logit_bias")

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Common, kw_only=True):
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=1024)]
    max_completion_tokens: PositiveInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.tools or self.tool_choice not in (None, "none"):
            raise BadRequest("tools are not supported by this gateway", param="tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise BadRequest("only response_format type 'text' is supported", param="response_format")

    def plain_messages(self) -> list[dict[str, str]]:
        out = []
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list):
                texts = []
                for part in m.content:
                    if part.type != "text" or part.text is None:
                        raise BadRequest(
                            f"messages[{i}]: only text content parts are supported", param=f"messages[{i}].content"
                        )
                    texts.append(part.text)
                content = "".join(texts)
            elif m.content is None and m.role != "assistant":
                # as OpenAI's API answers it: only an assistant turn (with tool calls) may have no content
                raise BadRequest(
                    f"messages[{i}].content: expected a string or a list of content parts, got null",
                    param=f"messages[{i}].content",
                )
            else:
                content = m.content or ""
            role = "system" if m.role == "developer" else m.role
            out.append({"role": role, "content": content})
        return out


class CompletionRequest(_Common, kw_only=True):
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]
    echo: bool = False
    suffix: str | None = None
    best_of: PositiveInt | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise BadRequest("echo is not supported", param="echo")
        if self.suffix:
            raise BadRequest("suffix is not supported", param="suffix")
        if self.best_of not in (None, 1):
            raise BadRequest("only best_of=1 is supported", param="best_of")

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
