"""Training methods: one config (``configs.py``) and one trainer module per method, over one shared loop.

Each trainer module exposes ``prepare(config, base, source, work_dir) -> Prepared``: the model, the tokenised
examples, how to batch them and how to compute the loss. ``trainer.runs.loop.train`` does the rest.
"""

from __future__ import annotations

METHODS = ("sft-lora", "sft-full", "pretrain-clm", "pretrain-mlm", "contrastive", "seq2seq")


def trainer_module(method: str):
    """The module implementing ``method`` (imported lazily: each pulls in torch/transformers)."""
    import importlib

    name = {
        "sft-lora": "sft",
        "sft-full": "sft",
        "pretrain-clm": "pretrain_clm",
        "pretrain-mlm": "mlm",
        "contrastive": "contrastive",
        "seq2seq": "seq2seq",
    }.get(method)
    if name is None:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    return importlib.import_module(f"trainer.methods.{name}")
