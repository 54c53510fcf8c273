"""EmbeddedBackend on a tiny random Llama: batching keeps greedy results, streaming, stops, limits, cancel."""

from __future__ import annotations

import asyncio

import pytest

from gateway.inference.base import BackendInputError, GenerationRequest, SamplingParams
from gateway.inference.embedded import EmbeddedBackend, _held_back

PROMPTS = [
    "Hello, world! How are you today?",
    "The quick brown fox",
    "Paris is the capital of France. Berlin is",
    "Once upon a time there was a small village near the mountains. The people",
    "Numbers: 0 1 2 3",
    "Café, naïve, résumé",
    "A gateway routes requests to inference backends and",
    "Tell me a story about a dragon",
]


def req(prompt: str | None = None, messages=None, **params) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 16)
    return GenerationRequest("t", SamplingParams(**params), prompt=prompt, messages=messages)


@pytest.fixture(scope="module")
async def backend(tiny_model_dir):
    b = EmbeddedBackend(str(tiny_model_dir), name="tiny", max_batch=16)
    await b.start()
    yield b
    await b.close()


async def collect(b: EmbeddedBackend, r: GenerationRequest):
    deltas = [d async for d in b.stream(r)]
    return deltas


async def test_health_and_context(backend):
    assert await backend.health()
    assert backend.context_length == 256
    assert backend.tokenizer.convert_tokens_to_ids("<|im_end|>") in backend.stop_token_ids


async def test_generate_and_stream_agree(backend):
    r = await backend.generate(req(PROMPTS[0], max_tokens=20))
    deltas = await collect(backend, req(PROMPTS[0], max_tokens=20))
    assert "".join(d.text for d in deltas) == r.text
    assert deltas[-1].finish_reason == r.finish_reason
    assert deltas[-1].usage == r.usage
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert r.usage.prompt_tokens == backend.count_prompt_tokens(req(PROMPTS[0]))


@pytest.mark.parametrize("prompt", PROMPTS)
async def test_matches_hf_generate(backend, prompt):
    """Same greedy tokens as transformers' generate; streamed text == decoding all ids at once (UTF-8)."""
    import torch

    tok, model = backend.tokenizer, backend.model
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             eos_token_id=sorted(backend.stop_token_ids), pad_token_id=0)
    new = out[0, ids.shape[1]:].tolist()
    ends = [i for i, t in enumerate(new) if t in backend.stop_token_ids]
    n_completion = ends[0] + 1 if ends else len(new)
    new = new[: ends[0]] if ends else new
    deltas = await collect(backend, req(prompt, max_tokens=24))
    assert "".join(d.text for d in deltas) == tok.decode(new, skip_special_tokens=True)
    assert deltas[-1].usage.completion_tokens == n_completion
    assert deltas[-1].finish_reason == ("stop" if ends else "length")


async def test_concurrent_requests_match_single_greedy(backend):
    singles = [await backend.generate(req(p, max_tokens=24)) for p in PROMPTS]
    steps_before = backend.steps
    batched = await asyncio.gather(*(backend.generate(req(p, max_tokens=24)) for p in PROMPTS))
    for s, b in zip(singles, batched, strict=True):
        assert b.text == s.text
        assert b.usage == s.usage
        assert b.finish_reason == s.finish_reason
    # shared forward passes: far fewer decode steps than the sum of completion tokens
    assert backend.steps - steps_before < sum(s.usage.completion_tokens for s in singles) // 2


async def test_transformers_decode_path_matches(tiny_model_dir, backend):
    """The fallback path (transformers forward over the same batch cache) gives the same greedy text."""
    slow = EmbeddedBackend(str(tiny_model_dir), name="tiny-hf")
    slow.use_fast_path = False
    await slow.start()
    try:
        assert slow._fast is None and backend._fast is not None
        expect = [await backend.generate(req(p, max_tokens=20)) for p in PROMPTS[:4]]
        got = await asyncio.gather(*(slow.generate(req(p, max_tokens=20)) for p in PROMPTS[:4]))
        assert [g.text for g in got] == [e.text for e in expect]
    finally:
        await slow.close()
    assert not await slow.health()


async def test_chat_messages(backend):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = await backend.generate(req(messages=msgs, max_tokens=8))
    text = backend.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(backend.tokenizer(text, add_special_tokens=False).input_ids)
    assert r.usage.prompt_tokens == backend.count_prompt_tokens(req(messages=msgs))


async def test_max_tokens_length(backend):
    # a prompt whose greedy continuation does not hit an end token within 7 tokens
    for p in PROMPTS:
        full = await backend.generate(req(p, max_tokens=7))
        if full.finish_reason == "length":
            break
    else:
        pytest.skip("every prompt ends early on the tiny model")
    assert full.usage.completion_tokens == 7
    one = await backend.generate(req(p, max_tokens=1))
    assert one.finish_reason == "length" and one.usage.completion_tokens == 1


async def test_stop_sequence(backend):
    base = await backend.generate(req(PROMPTS[3], max_tokens=30))
    text = base.text
    assert len(text) > 6
    stop = text[3:6]  # a stop string in the middle of the greedy text
    first = text.find(stop)
    deltas = await collect(backend, req(PROMPTS[3], max_tokens=30, stop=[stop, "never-there"]))
    got = "".join(d.text for d in deltas)
    assert got == text[:first]
    assert stop not in got
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.completion_tokens <= base.usage.completion_tokens


def test_held_back():
    assert _held_back("hello wor", ["world"]) == 3
    assert _held_back("hello", ["xyz"]) == 0
    assert _held_back("ab", ["abc", "b"]) == 2


async def test_seed_reproducible(backend):
    a = await backend.generate(req(PROMPTS[1], temperature=1.0, top_p=0.9, seed=1234, max_tokens=20))
    b = await backend.generate(req(PROMPTS[1], temperature=1.0, top_p=0.9, seed=1234, max_tokens=20))
    assert a.text == b.text
    others = {(await backend.generate(req(PROMPTS[1], temperature=1.5, seed=s, max_tokens=20))).text
              for s in range(4)}
    assert len(others) > 1


async def test_cancel_stream_then_keep_serving(backend):
    expected = await backend.generate(req(PROMPTS[4], max_tokens=40))
    long = [backend.generate(req(p, max_tokens=60)) for p in PROMPTS[5:7]]
    tasks = [asyncio.create_task(c) for c in long]
    gen = backend.stream(req(PROMPTS[0], max_tokens=200))
    async for _ in gen:
        break
    await gen.aclose()  # client gone
    # a cancelled generate() task also leaves the batch
    t = asyncio.create_task(backend.generate(req(PROMPTS[1], max_tokens=200)))
    await asyncio.sleep(0.05)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    after = await backend.generate(req(PROMPTS[4], max_tokens=40))
    assert after.text == expected.text
    await asyncio.gather(*tasks)
    for _ in range(100):
        if not backend.engine._active and not backend.engine._pending:
            break
        await asyncio.sleep(0.02)
    assert not backend.engine._active, "cancelled sequences must leave the batch"
    assert await backend.health()


async def test_prompt_too_long(backend):
    long_prompt = "Hello, world! " * 200
    assert backend.count_prompt_tokens(req(long_prompt)) > 256
    with pytest.raises(BackendInputError, match="context"):
        await backend.generate(req(long_prompt))
    with pytest.raises(BackendInputError):
        async for _ in backend.stream(req(long_prompt)):
            pass


async def test_max_tokens_clamped_to_context(backend):
    prompt = "Hello, world! " * 26
    assert 200 < backend.count_prompt_tokens(req(prompt)) < 255
    r = await backend.generate(req(prompt, max_tokens=1000))
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 256
    if r.finish_reason == "length":
        assert r.usage.prompt_tokens + r.usage.completion_tokens == 256


async def test_queue_depth_gauge_and_pending_cancel(tiny_model_dir):
    from gateway.metrics import QUEUE_DEPTH, REGISTRY

    b = EmbeddedBackend(str(tiny_model_dir), name="tiny-one", max_batch=1)
    await b.start()
    try:
        tasks = [asyncio.create_task(b.generate(req(p, max_tokens=30))) for p in PROMPTS[:4]]
        await asyncio.sleep(0)  # all four submitted; one slot
        depth = REGISTRY.get_sample_value("palisade_queue_depth", {"model": "tiny-one"})
        assert depth is not None and depth >= 2
        tasks[-1].cancel()  # a request still waiting is forgotten without ever running
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[-1], asyncio.CancelledError)
        assert all(r.usage.completion_tokens > 0 for r in results[:-1])
        assert QUEUE_DEPTH.labels(model="tiny-one")._value.get() == 0
    finally:
        await b.close()
    assert not await b.health()
    await b.start()  # restart after close serves again
    try:
        assert await b.health()
        assert (await b.generate(req(PROMPTS[0], max_tokens=3))).usage.completion_tokens >= 1
    finally:
        await b.close()


async def test_empty_prompt_and_bad_messages(backend):
    r = await backend.generate(req("", max_tokens=3))
    assert r.usage.prompt_tokens == 1 and r.usage.completion_tokens >= 1
    with pytest.raises(BackendInputError):
        # a template that raises (like many real ones do for bad role order) is a 4xx, not a crash
        original = backend.tokenizer.chat_template
        backend.tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
        try:
            await backend.generate(req(messages=[{"role": "user", "content": "hi"}]))
        finally:
            backend.tokenizer.chat_template = original


async def test_chunked_prefill_same_result(tiny_model_dir, backend):
    """A prompt prefilled in small chunks, while another stream runs, gives the same greedy text."""
    prompt = "Once upon a time there was a small village near the mountains. " * 3
    expect = await backend.generate(req(prompt, max_tokens=20))
    chunked = EmbeddedBackend(str(tiny_model_dir), name="tiny-chunks")
    chunked.prefill_chunk = 8
    await chunked.start()
    try:
        other = asyncio.create_task(chunked.generate(req(PROMPTS[0], max_tokens=40)))
        await asyncio.sleep(0.01)
        got = await chunked.generate(req(prompt, max_tokens=20))
        assert got.text == expect.text and got.usage == expect.usage
        assert (await other).usage.completion_tokens > 0
    finally:
        await chunked.close()
