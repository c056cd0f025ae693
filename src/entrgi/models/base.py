"""The masked diffusion LM as the sampler sees it: ids + attention mask -> logits, plus its tokens.

A family adapter (Dream, LLaDA, any HF masked LM) subclasses :class:`DiffusionLM` and sets its mask
id, EOS ids, whether logits are right-shifted (Dream: position i is predicted by hidden state i−1),
and which ids can never be a response token (the mask id, padded logit rows beyond the tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..config import SamplerConfig
from ..conversation import Conversation, Prompt, prompt_messages
from .cache import BlockKVCache

#: The one EOS of the authors' released code (``SamplerConfig.match_released``).
ENDOFTEXT = "<|endoftext|>"


def transition_name(model: Any) -> str:
    """The step a model (or its family class) runs: its ``transition`` (``masked`` for any model that names none)."""
    return getattr(model, "transition", "masked")


def special_token_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a single text (e.g. BERT: [CLS] / [SEP])."""
    inner = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(inner) + 1):
        if full[i:i + len(inner)] == inner:
            return list(full[:i]), list(full[i + len(inner):])
    return [], []


class DiffusionLM(nn.Module):
    """Adapter around a bidirectional masked LM ``module(input_ids, attention_mask, position_ids)``.

    Args:
        module: returns logits (B, N, V) or an object with ``.logits``.
        tokenizer: a Hugging Face tokenizer.
        mask_token_id: the id of the mask token.
        eos_token_ids: ids that end a response (committed last when ``deprioritize_eos``).
        pad_token_id: id used to left-pad prompts (never attended to).
        shift_logits: Dream-style right shift (logits at i come from hidden state i−1).
        logit_width: V, the logit dimension (defaults to the module's output size when known).
        invalid_token_ids: extra ids that must never be sampled as response tokens.
        use_chat_template: wrap prompts in the tokenizer's chat template (None = when it has one).
        max_length: longest sequence the model accepts (prompt + response), if bounded.
    """

    family = "generic"
    #: The family's own sampler settings (SamplerConfig fields); see :meth:`recommended_sampler`.
    SAMPLER_DEFAULTS: dict = {}
    #: The step's stages for this family: ``masked`` (:mod:`entrgi.sampling.masked`) or ``canvas`` (DiffusionGemma).
    transition = "masked"

    def __init__(self, module: nn.Module, tokenizer, *, mask_token_id: int, eos_token_ids: Iterable[int],
                 pad_token_id: int, shift_logits: bool = False, logit_width: int | None = None,
                 invalid_token_ids: Iterable[int] = (), use_chat_template: bool | None = None,
                 max_length: int | None = None):
        super().__init__()
        self.module = module
        self.tokenizer = tokenizer
        self.mask_token_id = int(mask_token_id)
        self.eos_token_ids = tuple(sorted({int(i) for i in eos_token_ids}))
        self.pad_token_id = int(pad_token_id)
        self.shift_logits = bool(shift_logits)
        self.logit_width = int(logit_width if logit_width is not None else len(tokenizer))
        self.use_chat_template = (getattr(tokenizer, "chat_template", None) is not None
                                  if use_chat_template is None else use_chat_template)
        self.max_length = max_length
        invalid = {self.mask_token_id, *map(int, invalid_token_ids)}
        invalid.update(range(len(tokenizer), self.logit_width))  # padded rows of the output layer
        self.invalid_token_ids = tuple(sorted(i for i in invalid if 0 <= i < self.logit_width))
        self._prompt_head, _ = special_token_wrap(tokenizer)
        #: The model's layer of a run's settings (:func:`entrgi.settings.resolve_settings`): its family's sampler.
        self.settings_defaults: dict = {"sampler": dict(self.SAMPLER_DEFAULTS)}

    @classmethod
    def checkpoint_defaults(cls, name_or_path: str) -> dict:
        """The model's layer of a run's settings for a checkpoint, read without loading it (the family's sampler)."""
        return {"sampler": dict(cls.SAMPLER_DEFAULTS)}

    @classmethod
    def recommended_sampler(cls, **overrides) -> SamplerConfig:
        """A :class:`~entrgi.config.SamplerConfig` with this family's defaults (:attr:`SAMPLER_DEFAULTS`),
        then ``overrides``."""
        return SamplerConfig(**{**cls.SAMPLER_DEFAULTS, **overrides})

    # ---- tokens ---------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids that precede the response: the chat template with a generation prompt (a ``str`` is one
        user message, a :class:`~entrgi.conversation.Conversation` all its messages), or the tokenizer's
        leading special tokens (e.g. [CLS]) followed by the text to be continued (a conversation's
        :meth:`~entrgi.conversation.Conversation.plain_text`)."""
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True,
                                                     tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = prompt.plain_text() if isinstance(prompt, Conversation) else prompt
        return self._prompt_head + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_ids(self, ids: Sequence[int]) -> list[int]:
        """The response up to (not including) its first EOS."""
        out = []
        for i in ids:
            if int(i) in self.eos_token_ids:
                break
            out.append(int(i))
        return out

    def eos_ids(self, match_released: bool = False) -> tuple[int, ...]:
        """The ids that end a response: :attr:`eos_token_ids`; with ``match_released`` the released code's
        single EOS, ``<|endoftext|>`` (the tokenizer's eos token if its vocabulary has no ``<|endoftext|>``;
        the adapter's set if it has neither). Dream: (151643, 151645), released (151643,)."""
        if not match_released:
            return self.eos_token_ids
        tok = self.tokenizer
        tid = tok.convert_tokens_to_ids(ENDOFTEXT)
        if isinstance(tid, int) and tok.convert_ids_to_tokens(tid) == ENDOFTEXT:
            return (tid,)
        eos = getattr(tok, "eos_token_id", None)
        return (int(eos),) if eos is not None else self.eos_token_ids

    def decode_response(self, ids: Sequence[int], match_released: bool = False) -> str:
        """The response text of L slots: up to the first EOS (:attr:`eos_token_ids`), special tokens skipped,
        stripped; with ``match_released`` (the released code) the decode of all slots with special tokens
        skipped, text after an EOS included, nothing stripped."""
        if match_released:
            return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        return self.tokenizer.decode(self.response_ids(ids), skip_special_tokens=True).strip()

    def invalid_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean (V,) mask of ids never allowed as response tokens."""
        m = torch.zeros(self.logit_width, dtype=torch.bool, device=device)
        m[list(self.invalid_token_ids)] = True
        return m

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    # ---- DLLM KV cache (block decoding) -----------------------------------------------------------
    #: ``SamplerConfig.kv_cache`` modes this adapter implements (Dream, LLaDA, BERT/RoBERTa MLMs: also prefix, dual).
    KV_CACHE_MODES: tuple[str, ...] = ("none",)
    _kv: BlockKVCache | None = None

    def begin_block(self, mode: str, input_ids: torch.Tensor, start: int, end: int) -> None:
        """Start block [start, end) of the canvas ``input_ids`` with ``SamplerConfig.kv_cache`` = ``mode``
        (:mod:`entrgi.models.cache`): the next :meth:`response_logits` of this canvas runs it whole and keeps
        every layer's keys/values, the later ones run only the block's query window against them (adapters
        with a cache read :attr:`kv_cache` there). ``none`` drops any cache; the block already begun on this
        canvas keeps its cache (so the sampler may call this before every forward). A mode outside
        :attr:`KV_CACHE_MODES` is a ``ValueError``."""
        if mode not in self.KV_CACHE_MODES:
            raise ValueError(f"`kv_cache` = {mode!r} is not available for the {type(self).__name__} adapter (it "
                             f"supports {list(self.KV_CACHE_MODES)}; Dream, LLaDA and BERT/RoBERTa MLMs have 'prefix' "
                             "and 'dual'): set `kv_cache` to 'none'.")
        kv = self._kv
        if kv is not None and kv.owns(input_ids) and (kv.mode, kv.start, kv.end) == (mode, start, end):
            return
        self._kv = None if mode == "none" else BlockKVCache(mode, input_ids, start, end, int(self.shift_logits))

    def invalidate_kv_cache(self) -> None:
        """Recompute the block's keys/values at the next forward (a full, exact one; nothing without a cache)."""
        if self._kv is not None:
            self._kv.begin_recording()

    @property
    def kv_cache(self) -> BlockKVCache | None:
        """The current block's cache (None without one)."""
        return self._kv

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, V) for every position, shift already applied."""
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        logits = out.logits if hasattr(out, "logits") else out
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (B, N − start, V) of the response slots ``input_ids[:, start:]``.

        Adapters override this to run the output layer only on those slots."""
        return self(input_ids, attention_mask, position_ids)[:, start:]
