"""The embedded backend's batch state and lean decode step (used by ``embedded.py``'s worker thread).

``BatchKV`` is the running batch's KV cache, written in place; ``FastLlama`` is a Llama-family decode step over it
with fused projections. Both run only on the worker thread, under ``torch.inference_mode``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.inference.lora import LoraSet

log = logging.getLogger(__name__)


class BatchKV:
    """The running batch's KV cache: per layer ``[B, kv_heads, capacity, head_dim]`` buffers, left-padded.

    Columns ``[0, length)`` are filled; ``mask[b, t]`` is True where row ``b`` has a real token at ``t``.
    A decode step writes column ``length`` in place (no per-step concatenation); capacity grows in chunks.
    """

    GROW = 64

    def __init__(self, keys: list[Any], values: list[Any], mask: Any, length: int) -> None:
        self.keys, self.values, self.mask, self.length = keys, values, mask, length

    @classmethod
    def merge(cls, current: BatchKV | None, parts: list[tuple[list[Any], list[Any], Any]]) -> BatchKV:
        """Stack ``current`` (may be None) and new exact-size parts, right-aligned, into fresh buffers."""
        import torch

        items = []
        if current is not None:
            n = current.length
            items.append(([k[:, :, :n] for k in current.keys], [v[:, :, :n] for v in current.values],
                          current.mask[:, :n]))
        items.extend(parts)
        width = max(m.shape[1] for _, _, m in items)
        rows = sum(m.shape[0] for _, _, m in items)
        cap = width + cls.GROW
        ref = items[0][0]
        keys, values = [], []
        for li in range(len(ref)):
            b, h, _, d = ref[li].shape
            kb = ref[li].new_zeros((rows, h, cap, d))
            vb = items[0][1][li].new_zeros((rows, items[0][1][li].shape[1], cap, items[0][1][li].shape[3]))
            r = 0
            for ks, vs, m in items:
                nb, w = m.shape
                kb[r:r + nb, :, width - w:width] = ks[li]
                vb[r:r + nb, :, width - w:width] = vs[li]
                r += nb
            keys.append(kb)
            values.append(vb)
        mask = torch.zeros((rows, cap), dtype=torch.bool, device=items[0][2].device)
        r = 0
        for _, _, m in items:
            nb, w = m.shape
            mask[r:r + nb, width - w:width] = m
            r += nb
        return cls(keys, values, mask, width)

    def reserve(self, n: int) -> None:
        cap = self.mask.shape[1]
        if self.length + n <= cap:
            return
        new_cap = self.length + n + self.GROW
        self._resize(0, new_cap)

    def _resize(self, first: int, new_cap: int) -> None:
        """Copy columns ``[first, length)`` to the start of new buffers of ``new_cap`` columns."""
        n = self.length - first
        for store in (self.keys, self.values):
            for li, t in enumerate(store):
                nb = t.new_zeros((t.shape[0], t.shape[1], new_cap, t.shape[3]))
                nb[:, :, :n] = t[:, :, first:self.length]
                store[li] = nb
        m = self.mask.new_zeros((self.mask.shape[0], new_cap))
        m[:, :n] = self.mask[:, first:self.length]
        self.mask = m
        self.length = n

    def select(self, rows: list[int]) -> None:
        """Keep ``rows``; drop leading columns that are padding in every kept row."""
        import torch

        if len(rows) != self.mask.shape[0]:
            index = torch.tensor(rows, device=self.mask.device)
            self.keys = [k.index_select(0, index) for k in self.keys]
            self.values = [v.index_select(0, index) for v in self.values]
            self.mask = self.mask.index_select(0, index)
        first = int(self.mask[:, : self.length].any(dim=0).int().argmax())
        if first > 0:
            self._resize(first, self.mask.shape[1])

    def hf_cache(self) -> Any:
        """A transformers Cache view whose layers write the next column into these buffers."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        kv = self

        class _Layer(DynamicLayer):
            def __init__(self, li: int) -> None:
                super().__init__()
                self.li = li
                self.is_initialized = True

            def update(self, key_states, value_states, cache_kwargs=None):  # noqa: ANN001
                n = key_states.shape[2]
                t = kv.length
                kv.keys[self.li][:, :, t:t + n] = key_states
                kv.values[self.li][:, :, t:t + n] = value_states
                return kv.keys[self.li][:, :, :t + n], kv.values[self.li][:, :, :t + n]

            def get_seq_length(self) -> int:
                return kv.length

        cache = DynamicCache()
        cache.layers = [_Layer(i) for i in range(len(self.keys))]
        return cache


class FastLlama:
    """A lean decode-step forward for Llama-family models (Llama, SmolLM, Qwen2-style q/k/v biases).

    Same math as transformers' eager modules (RMSNorm in float32, RoPE from the model's own ``inv_freq``,
    SDPA), with q/k/v and gate/up projections fused into one matmul each and the KV cache written in place:
    far fewer Python-level ops per step, which is what bounds small-model decoding on CPU.
    """

    def __init__(self, model: Any) -> None:
        import torch

        cfg = model.config
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm_w = inner.norm.weight
        self.norm_eps = inner.norm.variance_epsilon
        self.lm_head = model.lm_head.weight
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = []
        #: per layer, the module paths of its four matmuls as peft adapters name them, and their output sizes
        self.lora_groups: list[tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]] = []
        self._lora_version = -1
        self._lora_tables: list[tuple[Any, ...]] = []
        for li, layer in enumerate(inner.layers):
            at, mlp = layer.self_attn, layer.mlp
            # fuse, then point the original modules at views of the fused weights (no extra memory)
            wqkv = torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], 0).contiguous()
            nq, nk = at.q_proj.weight.shape[0], at.k_proj.weight.shape[0]
            at.q_proj.weight.data = wqkv[:nq]
            at.k_proj.weight.data = wqkv[nq:nq + nk]
            at.v_proj.weight.data = wqkv[nq + nk:]
            bqkv = None
            if at.q_proj.bias is not None:
                bqkv = torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias], 0).contiguous()
                at.q_proj.bias.data = bqkv[:nq]
                at.k_proj.bias.data = bqkv[nq:nq + nk]
                at.v_proj.bias.data = bqkv[nq + nk:]
            wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0).contiguous()
            ni = mlp.gate_proj.weight.shape[0]
            mlp.gate_proj.weight.data = wgu[:ni]
            mlp.up_proj.weight.data = wgu[ni:]
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, wqkv, bqkv,
                at.o_proj.weight, layer.post_attention_layernorm.weight,
                layer.post_attention_layernorm.variance_epsilon, wgu, mlp.down_proj.weight, at.scaling,
            ))
            p = f"model.layers.{li}."
            self.lora_groups.append((
                ((p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"),
                 (nq, nk, at.v_proj.weight.shape[0])),
                ((p + "self_attn.o_proj",), (at.o_proj.weight.shape[0],)),
                ((p + "mlp.gate_proj", p + "mlp.up_proj"), (ni, mlp.up_proj.weight.shape[0])),
                ((p + "mlp.down_proj",), (mlp.down_proj.weight.shape[0],)),
            ))
        rot = inner.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.attention_scaling = float(getattr(rot, "attention_scaling", 1.0))
        self.dtype = self.embed.dtype

    @classmethod
    def build(cls, model: Any) -> FastLlama | None:
        cfg = model.config
        ok = (
            cfg.model_type in {"llama", "qwen2"}
            and getattr(cfg, "hidden_act", "silu") == "silu"
            and not getattr(cfg, "mlp_bias", False)
            and not getattr(cfg, "use_sliding_window", False)
            and not getattr(cfg, "pretraining_tp", 1) > 1
            and not getattr(model.model.layers[0].self_attn.o_proj, "bias", None) is not None
        )
        if not ok:
            return None
        try:
            return cls(model)
        except AttributeError:  # an unexpected module layout: use the transformers forward
            log.info("lean decode path unavailable for %s", cfg.model_type, exc_info=True)
            return None

    @staticmethod
    def _rms(x: Any, w: Any, eps: float) -> Any:
        import torch

        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return w * x.to(dtype)

    def supports(self, lora: LoraSet) -> bool:
        """Whether every loaded adapter touches only the four fused matmuls of each layer (else: the transformers
        forward with hooks serves adapted rows)."""
        known = {m for groups in self.lora_groups for group, _ in groups for m in group}
        return lora.modules() <= known

    def _tables(self, lora: LoraSet) -> list[tuple[Any, ...]]:
        if self._lora_version != lora.version:
            self._lora_tables = [tuple(lora.table(g, o) for g, o in groups) for groups in self.lora_groups]
            self._lora_version = lora.version
        return self._lora_tables

    def decode(self, input_ids: Any, positions: Any, kv: BatchKV, lora: LoraSet | None = None,
               rows: Any = None) -> Any:
        """One token per row at ``positions``; writes K/V at column ``kv.length``; [B, vocab] logits.

        ``rows``: each row's adapter slot in ``lora`` (None: no row has an adapter)."""
        if rows is None or lora is None:
            return self._decode(input_ids, positions, kv, None, None, None)
        with lora.applying(rows):
            return self._decode(input_ids, positions, kv, lora, self._tables(lora), rows)

    def _decode(self, input_ids: Any, positions: Any, kv: BatchKV, lora: LoraSet | None,
                tables: list[tuple[Any, ...]] | None, rows: Any) -> Any:
        import torch
        import torch.nn.functional as F  # noqa: N812

        b = input_ids.shape[0]
        hq, hk, d = self.n_heads, self.n_kv, self.head_dim
        t = kv.length
        kv.mask[:, t] = True
        n = t + 1
        # RoPE exactly as transformers computes it (float32 outer product, cos/sin, attention scaling)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(self.dtype)[:, None, None, :]  # [B, 1, 1, D]
        sin = (emb.sin() * self.attention_scaling).to(self.dtype)[:, None, None, :]
        mask = kv.mask[:, None, None, :n]
        if bool(mask.all()):
            mask = None
        x = F.embedding(input_ids, self.embed)[:, None, :]  # [B, 1, H]
        half = d // 2
        for li, (w1, e1, wqkv, bqkv, wo, w2, e2, wgu, wd, scaling) in enumerate(self.layers):
            t_qkv, t_o, t_gu, t_d = tables[li] if tables is not None else (None, None, None, None)
            h = self._rms(x, w1, e1)
            qkv = F.linear(h, wqkv, bqkv)
            if t_qkv is not None:
                qkv = qkv + lora.delta(t_qkv, h, rows)
            qk = qkv[..., : (hq + hk) * d].view(b, hq + hk, 1, d)  # RoPE on q and k heads at once
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            q, k = qk[:, :hq], qk[:, hq:]
            v = qkv[..., (hq + hk) * d:].view(b, hk, 1, d)
            kb, vb = kv.keys[li], kv.values[li]
            kb[:, :, t:n] = k
            vb[:, :, t:n] = v
            a = F.scaled_dot_product_attention(
                q, kb[:, :, :n], vb[:, :, :n], attn_mask=mask, scale=scaling, enable_gqa=hq != hk,
            )
            a = a.transpose(1, 2).reshape(b, 1, hq * d)
            o = F.linear(a, wo)
            if t_o is not None:
                o = o + lora.delta(t_o, a, rows)
            x = x + o
            h = self._rms(x, w2, e2)
            gu = F.linear(h, wgu)
            if t_gu is not None:
                gu = gu + lora.delta(t_gu, h, rows)
            g, u = gu.chunk(2, dim=-1)
            m = F.silu(g) * u
            y = F.linear(m, wd)
            if t_d is not None:
                y = y + lora.delta(t_d, m, rows)
            x = x + y
        x = self._rms(x[:, 0], self.norm_w, self.norm_eps)
        kv.length = n
        return F.linear(x, self.lm_head)
