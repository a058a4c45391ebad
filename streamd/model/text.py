"""Text encoders: prompts -> padded caption embeddings and attention masks for the DiT's cross-attention.

LongCat-Video conditions on UMT5-XXL encoder hidden states (d_model 4096) of prompts padded to 512 tokens, with an
attention mask marking the real tokens. :class:`UMT5TextEncoder` loads that encoder from a local checkpoint;
:class:`EmbeddedTextEncoder` is a deterministic stand-in with the same interface that needs no download.
:class:`PromptCache` memoises either, because a live stream re-uses a handful of prompts for thousands of steps.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:  # transformers is heavy to import; only UMT5TextEncoder.from_pretrained needs it at run time.
    from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

_WORD = re.compile(r"\w+")


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompts into caption embeddings ``[B, L, D]`` and an int64 mask ``[B, L]`` (1 = real token).

    ``L`` is always ``max_length`` (prompts are padded to it and truncated at it); ``D`` is ``caption_channels``.
    Embeddings live on the encoder's device in its dtype.
    """

    caption_channels: int
    max_length: int

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode ``prompts`` to ``(embeds [B, L, D], mask [B, L] int64)``."""
        ...


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    """Return ``prompts`` as a list, raising ValueError for a bare string, an empty batch or a non-string item."""
    if isinstance(prompts, str):
        raise ValueError("encode() takes a sequence of prompts, got a single str; wrap it in a list")
    batch = list(prompts)
    if not batch:
        raise ValueError("encode() needs at least one prompt, got an empty sequence")
    for i, prompt in enumerate(batch):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
    return batch


class UMT5TextEncoder:
    """:class:`TextEncoder` over a transformers ``UMT5EncoderModel`` and its tokenizer (LongCat-Video's encoder).

    Returns the encoder's ``last_hidden_state`` for prompts padded to ``max_length`` tokens, with the tokenizer's
    attention mask. Runs without gradients.
    """

    def __init__(
        self,
        model: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
    ) -> None:
        """Wrap a built encoder and tokenizer; moves the encoder to ``device``/``dtype`` and into eval mode."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.device: torch.device = torch.device(device)
        self.dtype: torch.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.max_length: int = max_length
        self.caption_channels: int = int(model.config.d_model)

    @classmethod
    def from_pretrained(
        cls,
        root: Path | str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
    ) -> UMT5TextEncoder:
        """Load ``root/"text_encoder"`` (possibly sharded) and ``root/"tokenizer"`` from disk only.

        Raises:
            FileNotFoundError: either folder is missing.
            ValueError: a folder exists but transformers cannot load it.
        """
        root = Path(root)
        encoder_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
        for folder, what in ((encoder_dir, "UMT5 text encoder"), (tokenizer_dir, "tokenizer")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} folder {folder} does not exist")
        from transformers import AutoTokenizer, UMT5EncoderModel  # deferred: see the TYPE_CHECKING import

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot load a tokenizer from {tokenizer_dir}: {exc}") from exc
        try:
            model = UMT5EncoderModel.from_pretrained(encoder_dir, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot load a UMT5EncoderModel from {encoder_dir}: {exc}") from exc
        return cls(model, tokenizer, device, dtype, max_length)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode ``prompts`` to ``(embeds [B, max_length, d_model], mask [B, max_length] int64)``."""
        # no_grad rather than inference_mode: cached embeddings are later concatenated and written into buffers
        # outside inference mode, which inference tensors forbid.
        batch = _check_prompts(prompts)
        tokens = self.tokenizer(
            batch,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(self.device)  # ids: [B, L]
        mask = tokens["attention_mask"].to(device=self.device, dtype=torch.long)  # mask: [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # hidden: [B, L, D]
        return hidden.to(self.dtype), mask


def _sinusoid(length: int, channels: int) -> Tensor:
    """Fixed sinusoidal position signal, float64 ``[length, channels]`` (sin on even, cos on odd channels)."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)  # pos: [L, 1]
    half = (channels + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)  # freq: [ceil(D/2)]
    angle = pos * freq  # angle: [L, ceil(D/2)]
    signal = torch.zeros(length, channels, dtype=torch.float64)
    signal[:, 0::2] = torch.sin(angle)
    signal[:, 1::2] = torch.cos(angle)[:, : channels // 2]
    return signal


class EmbeddedTextEncoder:
    """Deterministic stand-in :class:`TextEncoder` that needs no downloaded file (NOT a language model).

    A prompt is split into lowercase word tokens (``\\w+``); each word maps to a row of a fixed embedding table
    through a stable BLAKE2b hash modulo ``vocab_size`` (never Python's per-process salted ``hash()``), a fixed
    sinusoidal position signal is added, tokens beyond ``max_length`` are dropped and the rest zero-padded.
    Same prompt -> bit-identical embeddings in every instance and process with the same ``seed``; different words
    -> different embeddings (up to hash collisions in the vocabulary).

    A prompt without any word (notably ``""``, the unconditional / negative prompt of classifier-free guidance)
    becomes one special ``<empty>`` token with its own table row, so at least one position is attended and the
    cross-attention softmax never runs over an all-masked row.

    Memory bound: the table holds ``(vocab_size + 1) * caption_channels`` values (about 64 MiB in float32 for
    the defaults with ``caption_channels=4096``).
    """

    def __init__(
        self,
        caption_channels: int,
        max_length: int = 32,
        seed: int = 0,
        *,
        vocab_size: int = 4096,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Build the seeded ``[vocab_size + 1, caption_channels]`` table and the position signal once."""
        if caption_channels < 1:
            raise ValueError(f"caption_channels must be >= 1, got {caption_channels}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.caption_channels: int = caption_channels
        self.max_length: int = max_length
        self.seed: int = seed
        self.vocab_size: int = vocab_size
        self.device: torch.device = torch.device(device)
        self.dtype: torch.dtype = dtype
        # The table is drawn on the CPU in float32 from its own generator so that the values do not depend on the
        # target device's RNG or on the global seed; the last row is the <empty> token.
        gen = torch.Generator(device="cpu").manual_seed(seed)
        table = torch.randn(vocab_size + 1, caption_channels, generator=gen, dtype=torch.float32)
        self._table = table.to(device=self.device, dtype=dtype)  # [V + 1, D]
        self._positions = _sinusoid(max_length, caption_channels).to(device=self.device, dtype=dtype)  # [L, D]
        self._empty_id: int = vocab_size

    def token_ids(self, prompt: str) -> list[int]:
        """Table rows of ``prompt``'s tokens, truncated to ``max_length`` (``[<empty>]`` for a wordless prompt)."""
        words = _WORD.findall(prompt.lower())
        if not words:
            return [self._empty_id]
        ids = [
            int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little") % self.vocab_size
            for word in words[: self.max_length]
        ]
        return ids

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode ``prompts`` to ``(embeds [B, max_length, D], mask [B, max_length] int64)``; padding is zero."""
        batch = _check_prompts(prompts)
        ids = torch.zeros(len(batch), self.max_length, dtype=torch.long)  # ids: [B, L]
        mask = torch.zeros(len(batch), self.max_length, dtype=torch.long)  # mask: [B, L]
        for row, prompt in enumerate(batch):
            token_ids = self.token_ids(prompt)
            ids[row, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
            mask[row, : len(token_ids)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = self._table[ids] + self._positions.unsqueeze(0)  # embeds: [B, L, D]
        embeds = embeds * mask.unsqueeze(-1).to(self.dtype)  # zero the padding positions
        return embeds, mask


class PromptCache:
    """LRU memo of a :class:`TextEncoder`'s output per prompt, bounded to ``capacity`` prompts.

    Each entry holds ``max_length * caption_channels`` embedding values on the encoder's device (4 MiB per prompt
    for UMT5-XXL in bf16 at 512 tokens, so 256 MiB at the default capacity of 64). The returned tensors are the
    cached ones, shared between callers: treat them as read-only.
    """

    def __init__(self, encoder: TextEncoder, capacity: int = 64) -> None:
        """Wrap ``encoder``; keep at most ``capacity`` (>= 1) prompts, evicting the least recently used."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.encoder: TextEncoder = encoder
        self.capacity: int = capacity
        self.hits: int = 0
        self.misses: int = 0
        self._entries: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        # The engine thread reads while the prompt thread (engine/prompts.py) fills; encoding runs outside it.
        self._lock = threading.Lock()

    def get(self, prompt: str) -> tuple[Tensor, Tensor]:
        """Embeddings ``[1, L, D]`` and mask ``[1, L]`` of ``prompt``, encoding it on a miss. Thread-safe."""
        with self._lock:
            entry = self._entries.get(prompt)
            if entry is not None:
                self.hits += 1
                self._entries.move_to_end(prompt)
                return entry
            self.misses += 1
        embeds, mask = self.encoder.encode([prompt])
        entry = (embeds, mask)
        with self._lock:
            self._entries[prompt] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry

    def __contains__(self, prompt: Any) -> bool:
        """Whether ``prompt`` is cached (does not count as a hit or refresh its recency)."""
        with self._lock:
            return prompt in self._entries

    def __len__(self) -> int:
        """Number of cached prompts (at most ``capacity``)."""
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every cached prompt (counters are kept)."""
        with self._lock:
            self._entries.clear()
