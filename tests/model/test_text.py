"""Text encoders: the embedded stand-in, the LRU prompt cache, and UMT5TextEncoder over a tiny offline checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from streamd.model.text import EmbeddedTextEncoder, PromptCache, TextEncoder, UMT5TextEncoder


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing here may reach the Hugging Face hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- EmbeddedTextEncoder ----------------------------------------------------------------------------------------


def test_embedded_shapes_and_protocol() -> None:
    enc = EmbeddedTextEncoder(caption_channels=24, max_length=10)
    assert isinstance(enc, TextEncoder)
    embeds, mask = enc.encode(["a red fox", "snow"])
    assert embeds.shape == (2, 10, 24) and embeds.dtype == torch.float32
    assert mask.shape == (2, 10) and mask.dtype == torch.int64
    assert mask.sum(dim=1).tolist() == [3, 1]


def test_embedded_mask_and_zero_padding() -> None:
    enc = EmbeddedTextEncoder(caption_channels=16, max_length=8)
    embeds, mask = enc.encode(["A red, fox!"])  # punctuation and case do not make tokens
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert torch.count_nonzero(embeds[0, 3:]) == 0
    assert torch.all(embeds[0, :3].abs().sum(dim=-1) > 0)
    same, _ = enc.encode(["a red fox"])
    assert torch.equal(embeds, same)


def test_embedded_is_deterministic_across_instances() -> None:
    prompts = ["a red fox jumps over the lazy dog", "Snow falls"]
    a, ma = EmbeddedTextEncoder(32, max_length=12).encode(prompts)
    b, mb = EmbeddedTextEncoder(32, max_length=12).encode(prompts)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    c, _ = EmbeddedTextEncoder(32, max_length=12, seed=1).encode(prompts)
    assert not torch.equal(a, c)


def test_embedded_different_prompts_differ() -> None:
    enc = EmbeddedTextEncoder(32, max_length=6)
    embeds, mask = enc.encode(["a red fox", "a blue fox", "fox red a"])
    assert torch.equal(mask[0], mask[1])
    assert not torch.equal(embeds[0], embeds[1])
    assert torch.equal(embeds[0, 0], embeds[1, 0])  # shared first word at the same position
    assert not torch.equal(embeds[0], embeds[2])  # word order matters through the position signal


def test_embedded_truncates_at_max_length() -> None:
    enc = EmbeddedTextEncoder(16, max_length=4)
    embeds, mask = enc.encode(["one two three four five six"])
    assert embeds.shape == (1, 4, 16)
    assert mask.tolist() == [[1, 1, 1, 1]]
    head, _ = enc.encode(["one two three four"])
    assert torch.equal(embeds, head)


@pytest.mark.parametrize("prompt", ["", "   ", "!?,."])
def test_embedded_empty_prompt_attends_one_token(prompt: str) -> None:
    enc = EmbeddedTextEncoder(16, max_length=5)
    embeds, mask = enc.encode([prompt])
    assert mask.tolist() == [[1, 0, 0, 0, 0]]
    assert torch.isfinite(embeds).all()
    assert embeds[0, 0].abs().sum() > 0 and torch.count_nonzero(embeds[0, 1:]) == 0
    empty, _ = enc.encode([""])
    word, _ = enc.encode(["empty"])
    assert torch.equal(embeds, empty) and not torch.equal(empty, word)


def test_embedded_dtype_and_odd_channels() -> None:
    enc = EmbeddedTextEncoder(7, max_length=3, dtype=torch.bfloat16)
    embeds, mask = enc.encode(["x"])
    assert embeds.shape == (1, 3, 7) and embeds.dtype == torch.bfloat16
    assert mask.dtype == torch.int64


def test_embedded_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="caption_channels"):
        EmbeddedTextEncoder(0)
    with pytest.raises(ValueError, match="max_length"):
        EmbeddedTextEncoder(8, max_length=0)
    enc = EmbeddedTextEncoder(8)
    with pytest.raises(ValueError, match="single str"):
        enc.encode("a red fox")
    with pytest.raises(ValueError, match="at least one prompt"):
        enc.encode([])


# --- PromptCache ------------------------------------------------------------------------------------------------


class _CountingEncoder:
    """Embedded encoder that records every batch it is asked to encode."""

    def __init__(self) -> None:
        self.inner = EmbeddedTextEncoder(8, max_length=4)
        self.caption_channels = self.inner.caption_channels
        self.max_length = self.inner.max_length
        self.calls: list[list[str]] = []

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(prompts))
        return self.inner.encode(prompts)


def test_prompt_cache_hits_and_misses() -> None:
    enc = _CountingEncoder()
    cache = PromptCache(enc, capacity=4)
    embeds, mask = cache.get("a red fox")
    assert embeds.shape == (1, 4, 8) and mask.shape == (1, 4)
    again, _ = cache.get("a red fox")
    assert again is embeds
    cache.get("snow")
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)
    assert enc.calls == [["a red fox"], ["snow"]]


def test_prompt_cache_evicts_least_recently_used() -> None:
    enc = _CountingEncoder()
    cache = PromptCache(enc, capacity=2)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # refresh "a": "b" is now the oldest
    cache.get("c")  # evicts "b"
    assert len(cache) == 2
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.get("b")  # a miss again, evicts "a"
    assert "a" not in cache
    assert (cache.hits, cache.misses) == (1, 4)
    assert enc.calls == [["a"], ["b"], ["c"], ["b"]]


def test_prompt_cache_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PromptCache(_CountingEncoder(), capacity=0)


# --- UMT5TextEncoder --------------------------------------------------------------------------------------------

_WORDS = "a red fox jumps over the lazy dog in snow at night".split()


@pytest.fixture(scope="module")
def umt5_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random UMT5 encoder and a word-level tokenizer (pad=0, eos=1, unk=2), built and saved offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in _WORDS:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Like T5 tokenizers, append </s> to every prompt.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")

    root = tmp_path_factory.mktemp("umt5")
    fast.save_pretrained(root / "tokenizer")
    config = UMT5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


def test_umt5_encoder_shapes_and_mask(umt5_root: Path) -> None:
    enc = UMT5TextEncoder.from_pretrained(umt5_root, "cpu", torch.float32, max_length=16)
    assert isinstance(enc, TextEncoder)
    assert (enc.caption_channels, enc.max_length) == (32, 16)
    embeds, mask = enc.encode(["a red fox", "the lazy dog jumps over snow"])
    assert embeds.shape == (2, 16, 32) and embeds.dtype == torch.float32
    assert mask.shape == (2, 16) and mask.dtype == torch.int64
    # words + </s>
    assert mask.sum(dim=1).tolist() == [4, 7]
    assert mask[0, 4:].sum() == 0 and mask[1, 7:].sum() == 0
    assert torch.isfinite(embeds).all()


def test_umt5_encoder_padding_does_not_change_real_tokens(umt5_root: Path) -> None:
    enc = UMT5TextEncoder.from_pretrained(umt5_root, "cpu", torch.float32, max_length=16)
    alone, _ = enc.encode(["a red fox"])
    batched, _ = enc.encode(["a red fox", "the lazy dog jumps over snow at night"])
    torch.testing.assert_close(alone[0, :4], batched[0, :4])


def test_umt5_encoder_truncates(umt5_root: Path) -> None:
    enc = UMT5TextEncoder.from_pretrained(umt5_root, "cpu", torch.float32, max_length=5)
    embeds, mask = enc.encode([" ".join(_WORDS)])
    assert embeds.shape == (1, 5, 32)
    assert mask.tolist() == [[1, 1, 1, 1, 1]]


def test_umt5_encoder_works_with_prompt_cache(umt5_root: Path) -> None:
    cache = PromptCache(UMT5TextEncoder.from_pretrained(umt5_root, max_length=8), capacity=1)
    embeds, mask = cache.get("")
    assert embeds.shape == (1, 8, 32) and mask.sum() == 1  # only </s>


@pytest.mark.parametrize("missing", ["text_encoder", "tokenizer"])
def test_umt5_missing_folder(tmp_path: Path, umt5_root: Path, missing: str) -> None:
    import shutil

    for sub in ("text_encoder", "tokenizer"):
        if sub != missing:
            shutil.copytree(umt5_root / sub, tmp_path / sub)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / missing)):
        UMT5TextEncoder.from_pretrained(tmp_path)
