"""Each training method trains a tiny model for a few steps in tmp_path with falling loss (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.training_data import write_source
from trainer.methods import trainer_module
from trainer.methods.configs import config_for, parse_sets
from trainer.runs.loop import seed_everything, train

pytestmark = pytest.mark.timeout(120)


def _run(method: str, base, source, tmp_path: Path, **overrides):
    cfg = config_for(method, {"eval_every": 0, "checkpoint_every": 0, **overrides})
    seed_everything(cfg.seed)
    prep = trainer_module(method).prepare(cfg, base, source, tmp_path)
    result = train(prep, cfg, tmp_path)
    return prep, result


def _falls(losses: list[float]) -> bool:
    head, tail = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    return tail < head * 0.9


def test_lora_sft_masks_non_assistant_tokens_and_learns(tiny_model_dir, tmp_path):
    source = write_source(tmp_path / "data", "chat")
    cfg = config_for("sft-lora", {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2, "lora_rank": 4,
                                  "eval_every": 0, "checkpoint_every": 0})
    seed_everything(cfg.seed)
    prep = trainer_module("sft-lora").prepare(cfg, str(tiny_model_dir), source, tmp_path)
    tok = prep.tokenizer

    # one batch: exactly the assistant replies (and their end-of-turn token) carry labels
    batch = prep.collate(prep.train[:2], torch.Generator())
    for row_ids, row_labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = [int(i) for i, lab in zip(row_ids, row_labels, strict=True) if lab != -100]
        text = tok.decode(kept)
        assert text.startswith("The capital of ") and text.endswith("<|im_end|>"), text
        assert "user" not in text and "What is" not in text and "system" not in text
    assert set(batch["labels"][batch["attention_mask"] == 0].tolist()) <= {-100}

    before = {n: p.detach().clone() for n, p in prep.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in prep.model.named_parameters() if not p.requires_grad}
    assert before and all("lora_" in n for n in before)
    result = train(prep, cfg, tmp_path)
    assert result.losses[-1] < result.losses[0] * 0.5
    after = dict(prep.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)

    prep.save(prep.model, tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_pretrain_clm_trains_own_tokenizer(tmp_path):
    source = write_source(tmp_path / "data", "text")
    prep, result = _run("pretrain-clm", "preset:tiny", source, tmp_path, max_steps=15, batch_size=4, seq_len=32,
                        vocab_size=300)
    assert 40 < len(prep.tokenizer) <= 300
    assert prep.tokenizer.decode(prep.tokenizer("The knight rode")["input_ids"]) == "The knight rode"
    assert _falls(result.losses)
    assert result.perplexity is not None and result.eval_loss is not None


def test_mlm_with_nsp(tmp_path):
    source = write_source(tmp_path / "data", "text")
    prep, result = _run("pretrain-mlm", "preset:tiny", source, tmp_path, max_steps=15, batch_size=8, seq_len=48,
                        vocab_size=300, nsp=True, mlm_probability=0.3, learning_rate=5e-3)
    assert {ex["next"] for ex in prep.train} == {0, 1}
    batch = prep.collate(prep.train[:4], torch.Generator().manual_seed(0))
    assert "next_sentence_label" in batch and (batch["labels"] != -100).any()
    assert _falls(result.losses)


def test_contrastive_in_batch_negatives(tmp_path):
    source = write_source(tmp_path / "data", "pairs")
    _prep, result = _run("contrastive", "preset:tiny", source, tmp_path, max_steps=15, batch_size=8, seq_len=32,
                         vocab_size=200, temperature=0.1)
    assert _falls(result.losses)


@pytest.mark.parametrize(("kind", "objective"), [("text", "span_corruption"), ("pairs", "seq2seq")])
def test_seq2seq(tmp_path, kind, objective):
    source = write_source(tmp_path / "data", kind)
    prep, result = _run("seq2seq", "preset:tiny", source, tmp_path, max_steps=15, batch_size=8, seq_len=48,
                        vocab_size=300)
    assert prep.info["objective"] == objective
    assert _falls(result.losses)


def test_config_sets_are_typed_and_checked():
    cfg = config_for("sft-full", parse_sets(["max_steps=5", "learning_rate=1e-5", "batch_size=2"]))
    assert (cfg.max_steps, cfg.learning_rate, cfg.batch_size, cfg.lora) == (5, 1e-5, 2, False)
    assert config_for("sft-lora").learning_rate > config_for("sft-full").learning_rate
    assert config_for("sft-lora").learning_rate < config_for("pretrain-clm").learning_rate
    with pytest.raises(ValueError, match="unknown setting"):
        config_for("sft-lora", {"lora_rnak": 4})
    with pytest.raises(ValueError, match="must be int"):
        config_for("sft-lora", {"max_steps": "ten"})
