"""A tiny random-weight Llama causal LM with a locally trained tokenizer (no download), for fast tests.

``make_tiny_model(path)`` writes a transformers model directory (config, weights, tokenizer, ChatML chat
template like SmolLM2's) that ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(path)`` load.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. Paris is the capital of France. Berlin is the capital of Germany.
Rome is the capital of Italy. Madrid is the capital of Spain.
What is the capital of France? The answer is Paris.
Hello, world! How are you today? I am fine, thank you. Please tell me a story about a dragon and a knight.
Once upon a time there was a small village near the mountains. The people of the village were kind and honest.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.
Symbols: ! ? . , ; : - _ + = * / ( ) [ ] { } < > " ' # @ $ % & |
Machine learning models generate text one token at a time. A gateway routes requests to inference backends.
Café, naïve, résumé, über, Straße, 日本語, 中文, emoji 😀 🎉 — unicode text should round trip through bytes.
You are a helpful AI assistant. The user asks a question and the assistant answers it briefly and politely.
system user assistant
"""


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>"}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **special,
        additional_special_tokens=SPECIAL_TOKENS,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama model plus tokenizer into ``path`` (created if needed); returns ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(path)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger-than-default init so greedy outputs vary with the prompt instead of collapsing to one token.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(path)
    return path


def make_endless_tiny_model(path: Path, *, context: int = 32768) -> Path:
    """The tiny model, but one that never chooses end-of-sequence under greedy decoding and has a long context:
    a generation runs until ``max_tokens``, so a test can tell "cancelled" from "finished on its own".

    The output head is untied from the embeddings and the rows of every special token zeroed, so their logits are
    always 0 while the best of ~500 random rows is well above 0 (greedy never picks them). Every one of them, not
    only end-of-sequence: the gateway also stops on ``<|endoftext|>`` (id 0 here), which a random head picked now
    and then, ending a generation "on its own" within a few hundred tokens.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    make_tiny_model(path)
    model = LlamaForCausalLM.from_pretrained(path)
    special = {model.config.eos_token_id, *AutoTokenizer.from_pretrained(path).all_special_ids}
    model.config.tie_word_embeddings = False
    model.config.max_position_embeddings = context
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.copy_(model.get_input_embeddings().weight)
        for token in special:
            head.weight[token].zero_()
    model.lm_head = head
    model.save_pretrained(path)
    return path
