"""The `text_generation` client (generate, generate_stream, chat) against /tgi/{model} on a real gateway."""

from __future__ import annotations

import asyncio

import pytest
from text_generation import AsyncClient, Client
from text_generation.errors import BadRequestError, NotFoundError, UnknownError
from text_generation.types import Message

from tests.support.server import GatewayProcess, base_env, create_key


@pytest.fixture(scope="module")
def tgi(tmp_path_factory, tiny_models_file):
    data = tmp_path_factory.mktemp("gw-tgi")
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file))
    key = create_key(env, "tgi-tests", "tiny")
    proc = GatewayProcess(env, data / "serve.log").start()
    headers = {"Authorization": f"Bearer {key}"}
    yield proc, headers
    proc.stop()


def test_generate_and_stream_agree(tgi):
    proc, headers = tgi
    client = Client(base_url=f"{proc.url}/tgi/tiny", headers=headers, timeout=60)
    r = client.generate("The capital of France is", max_new_tokens=7)
    assert r.details.generated_tokens == 7
    assert r.details.finish_reason.value == "length"
    tokens = list(client.generate_stream("The capital of France is", max_new_tokens=7))
    assert "".join(t.token.text for t in tokens) == r.generated_text
    assert tokens[-1].generated_text == r.generated_text
    assert tokens[-1].details.generated_tokens == 7


def test_stop_sequence_and_seed(tgi):
    proc, headers = tgi
    client = Client(base_url=f"{proc.url}/tgi/tiny", headers=headers, timeout=60)
    a = client.generate("Once upon a time", max_new_tokens=10, do_sample=True, temperature=0.9, seed=42)
    b = client.generate("Once upon a time", max_new_tokens=10, do_sample=True, temperature=0.9, seed=42)
    assert a.generated_text == b.generated_text
    greedy = client.generate("Once upon a time", max_new_tokens=10).generated_text
    if len(greedy.strip()) > 2:
        stop = greedy.strip()[1:3]
        cut = client.generate("Once upon a time", max_new_tokens=10, stop_sequences=[stop])
        assert stop not in cut.generated_text
        assert len(cut.generated_text) < len(greedy)


def test_chat_and_async_client(tgi):
    proc, headers = tgi
    client = Client(base_url=f"{proc.url}/tgi/tiny", headers=headers, timeout=60)
    r = client.chat(messages=[Message(role="user", content="Hello")], max_tokens=6, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.usage["completion_tokens"] == 6

    async def go():
        ac = AsyncClient(base_url=f"{proc.url}/tgi/tiny", headers=headers, timeout=60)
        gen = await ac.generate("Hello", max_new_tokens=4)
        chunks = [c async for c in await ac.chat(messages=[Message(role="user", content="Hello")], max_tokens=6,
                                                 temperature=0, stream=True)]
        return gen, chunks

    gen, chunks = asyncio.run(go())
    assert gen.details.generated_tokens == 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content


def test_errors_reach_the_client(tgi):
    proc, headers = tgi
    with pytest.raises(NotFoundError):
        Client(base_url=f"{proc.url}/tgi/missing", headers=headers).generate("x", max_new_tokens=2)
    with pytest.raises(BadRequestError):
        Client(base_url=f"{proc.url}/tgi/tiny", headers=headers).generate("x", max_new_tokens=2, top_k=3)
    with pytest.raises(UnknownError):  # 401 is not one of TGI's own statuses
        Client(base_url=f"{proc.url}/tgi/tiny").generate("x", max_new_tokens=2)
