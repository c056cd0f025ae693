"""Any causal LM (``*ForCausalLM``) as a differentiable reward: the mean log-probability of the response.

The LM reads the soft slot embedding ê = Σ_v q_v e_v, and the same q gives the slot's target, the expected
log-probability (Σ_v q_v w_v)·h − logsumexp(W h); so the embedding table is ``[E | W | b]``. On hard tokens
the reward equals the discrete computation. It needs the prefix-cache layout (docs/rewards.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.cache_utils import Cache

from .base import RewardContext, RewardModel, left_pad, position_ids_from
from .hf import FrozenPrefixLayer, _layer_cache

_FULL_ROW = ("LikelihoodReward scores the response through the prefix-cache layout; the whole-row layout "
             "(GuidanceConfig(prefix_cache=False), the naive reference sampler) does not say where the prompt "
             "ends. Keep `prefix_cache` on (the default).")


def check_causal_lm(config: dict, where) -> None:
    """Refuse a config.json that is not a ``*ForCausalLM`` transformers implements (its remote code is never run)."""
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForCausalLM") for a in archs):
        raise ValueError(f"`{where}` is not a causal LM (architectures: {archs}, model_type: "
                         f"{config.get('model_type')!r}); a likelihood reward needs a *ForCausalLM checkpoint such as "
                         "Qwen/Qwen3-0.6B.")
    from transformers import CONFIG_MAPPING
    if config.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(f"`{where}` has model_type {config.get('model_type')!r}, which transformers does not "
                         "implement; its remote code is never run. Wrap the module with `LikelihoodReward(model, "
                         "tokenizer)` yourself.")


@dataclass
class PrefixState:
    """The encoded prompt prefixes of a batch: per-layer (keys, values) (B, h_kv, P, d_h) and the last
    prefix position's hidden state (B, h), which predicts the first scored token."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    last_hidden: torch.Tensor


class LikelihoodReward(RewardModel):
    """Mean log-probability of the response under a causal LM, read through input embeddings.

    Args:
        model: an HF ``*ForCausalLM`` (frozen here) with full attention (no sliding-window layers) and a
            linear LM head (no logit soft-capping or scaling: checked once on a short probe).
        tokenizer: its tokenizer.
        template: see :class:`~entrgi.reward.base.RewardModel` (``auto``: the chat template when the
            tokenizer has one, else ``plain``).
    """

    def __init__(self, model: nn.Module, tokenizer, template: str = "auto"):
        super().__init__(tokenizer, template)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
            raise ValueError(f"{type(model).__name__} has no linear LM head: LikelihoodReward needs a *ForCausalLM.")
        self.model = model.eval().requires_grad_(False)
        self._cache_kwarg = next((k for k in ("cache", "past_key_values")
                                  if k in inspect.signature(self._base.forward).parameters), None)
        cfg = model.config
        kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if self._cache_kwarg is None or kinds != {"full_attention"} or getattr(cfg, "use_sliding_window", False):
            raise ValueError(f"{type(model).__name__}: LikelihoodReward supports causal LMs with full attention and "
                             f"a key/value cache argument (layer types {sorted(kinds)}).")
        emb = model.get_input_embeddings()
        scale = getattr(emb, "embed_scale", None)
        E, W = emb.weight, head.weight
        bias = getattr(head, "bias", None)
        rows = min(E.shape[0], W.shape[0])
        if rows < len(tokenizer):
            raise ValueError(f"the LM has {rows} embedding rows but its tokenizer has {len(tokenizer)} ids.")
        self.input_dim = E.shape[1]
        self.tied = W is E and bias is None and scale is None
        if self.tied:
            self._table = None
        else:
            parts = [E[:rows] * (scale.to(E.dtype) if torch.is_tensor(scale) else (scale or 1.0)), W[:rows]]
            if bias is not None:
                parts.append(bias[:rows, None].to(W.dtype))
            self.register_buffer("_table", torch.cat([p.detach().to(E.dtype) for p in parts], -1), persistent=False)
        self.has_bias = bias is not None
        self._check_linear_head()

    @property
    def _base(self) -> nn.Module:
        return getattr(self.model, self.model.base_model_prefix)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, device_map=None,
                        template: str = "auto") -> LikelihoodReward:
        """Load with ``AutoModelForCausalLM`` (hub id or local folder, no remote code). A path that is not an
        existing folder, a folder without config.json or complete weights, a config that is not a causal LM
        transformers implements, or an unusable tokenizer raise ``ValueError`` first."""
        from ..hub import (
            check_hf_folder,
            config_vocab_size,
            load_auto_tokenizer,
            local_folder,
            read_config,
        )
        folder = local_folder(name_or_path)
        config = check_hf_folder(folder) if folder is not None else read_config(name_or_path)
        check_causal_lm(config, name_or_path)
        tokenizer = load_auto_tokenizer(name_or_path, config_vocab_size(config))
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, device_map=device_map,
                                                     trust_remote_code=False)
        if device is not None and device_map is None:
            model = model.to(device)
        return cls(model, tokenizer, template=template)

    # ---- the table and its parts ----------------------------------------------------------------
    def embedding_table(self) -> torch.Tensor:
        """``[E | W | b]`` (V, d + h [+ 1]); E itself when the head is tied and has no bias."""
        return self.model.get_input_embeddings().weight if self._table is None else self._table

    def _split(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(LM input (…, d), target head row (…, h), target bias (…) or None) of table-space embeddings."""
        d = self.input_dim
        if self.tied:
            return embeds, embeds, None
        x, rest = embeds[..., :d], embeds[..., d:]
        if self.has_bias:
            return x, rest[..., :-1], rest[..., -1]
        return x, rest, None

    def _head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """W h + b (…, V) in float32: the linear head the targets assume (the probe checks the model agrees)."""
        head = self.model.get_output_embeddings()
        return torch.nn.functional.linear(hidden, head.weight, getattr(head, "bias", None)).float()

    @torch.no_grad()
    def _check_linear_head(self) -> None:
        """The model's own logits on a short probe must equal the head read from the table (else the LM
        scales or soft-caps its logits or embeddings, which soft inputs cannot follow)."""
        table = self.embedding_table()
        ids = torch.arange(min(4, table.shape[0]), device=table.device)[None]
        ref = self.model(input_ids=ids).logits.float()
        x, _, _ = self._split(table[ids])
        mine = self._head_logits(self._base(inputs_embeds=x, use_cache=False).last_hidden_state)
        err = float((ref - mine).abs().max())
        if not err <= 1e-2 * max(float(ref.abs().max()), 1.0):
            raise ValueError(f"{type(self.model).__name__}: its logits are not a linear head of its last hidden "
                             "state over its input embeddings (soft-capping or scaling?); LikelihoodReward does not "
                             "support it.")

    # ---- layout ---------------------------------------------------------------------------------
    def context(self, prompt: str) -> RewardContext:
        """The base template's prefix/suffix; an empty prefix becomes the BOS (else EOS) token, since the
        first response token needs a position to be predicted from."""
        if prompt not in self._contexts:
            ctx = super().context(prompt)
            if not ctx.prefix_ids:
                start = self.tokenizer.bos_token_id
                start = self.tokenizer.eos_token_id if start is None else start
                if start is None:
                    raise ValueError("LikelihoodReward needs a token before the response: the template "
                                     f"{self.template!r} gives none and the tokenizer has no BOS or EOS token; use "
                                     "template 'plain' or 'chat'.")
                ctx = RewardContext((int(start),), ctx.suffix_ids)
            self._contexts[prompt] = ctx
        return self._contexts[prompt]

    @property
    def supports_prefix_cache(self) -> bool:
        return True

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        raise ValueError(_FULL_ROW)

    def _run_base(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  cache: Cache | None = None) -> torch.Tensor:
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        return self._base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **kwargs).last_hidden_state

    @torch.no_grad()
    def encode_prefix(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> PrefixState:
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("LikelihoodReward: every row needs a non-empty prompt prefix.")
        x, _, _ = self._split(inputs_embeds)
        out = self._base(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        keep = attention_mask.bool()[:, None, :, None]
        layers = [(layer.keys.masked_fill(~keep, 0.0), layer.values.masked_fill(~keep, 0.0))
                  for layer in _layer_cache(out).layers]
        return PrefixState(layers, out.last_hidden_state[:, -1])

    def forward_embeds_cached(self, prefix: PrefixState, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                              position_ids: torch.Tensor) -> torch.Tensor:
        """Mean log-prob (B,) of the attended continuation positions (response slots, then the suffix)."""
        x, target, target_bias = self._split(inputs_embeds)
        cache = Cache(layers=[FrozenPrefixLayer(k, v) for k, v in prefix.layers])
        hidden = self._run_base(x, attention_mask, position_ids, cache)  # (B, T, h)
        T = hidden.shape[1]
        scored = attention_mask[:, -T:].bool()  # (B, T)
        states = torch.cat([prefix.last_hidden.to(hidden.dtype).unsqueeze(1), hidden], 1)  # (B, T + 1, h)
        return self._mean_logprob(states, scored, target, target_bias)

    def _mean_logprob(self, states: torch.Tensor, scored: torch.Tensor, target: torch.Tensor,
                      target_bias: torch.Tensor | None) -> torch.Tensor:
        """states (B, T + 1, h): state 0 the last context token, state j + 1 continuation position j;
        position j is predicted from the last attended state before it. Returns the mean over ``scored``."""
        B, T = scored.shape
        attended = torch.cat([torch.ones_like(scored[:, :1]), scored], 1).long()  # (B, T + 1)
        idx = torch.arange(T + 1, device=scored.device) * attended
        prev = idx.cummax(-1).values[:, :T]  # (B, T): last attended state index <= j
        rows, cols = scored.nonzero(as_tuple=True)
        h_prev = states[rows, prev[rows, cols]]  # (n, h)
        tgt = (target[rows, cols].float() * h_prev.float()).sum(-1)  # (n,)
        if target_bias is not None:
            tgt = tgt + target_bias[rows, cols].float()
        logp = tgt - torch.logsumexp(self._head_logits(h_prev), -1)  # (n,)
        total = torch.zeros(B, device=logp.device, dtype=logp.dtype).index_add(0, rows, logp)
        return total / scored.sum(-1).clamp_min(1).to(total.dtype)

    # ---- discrete re-scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Mean log-prob (B,) of ``tokenise(response) + suffix`` after the prefix, by the model's own forward
        on the ids (float32, CPU)."""
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        device = self.embedding_table().device
        out = []
        for i in range(0, len(prompts), batch_size):
            rows, starts = [], []
            for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size]):
                rows.append(self.text_ids(p, r))
                starts.append(len(self.context(p).prefix_ids))
            ids, attn = left_pad(rows, 0, device)
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=attn,
                                                position_ids=position_ids_from(attn)).logits.float(), -1)
            tok = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (B, N - 1): log p(id_{t+1} | ..t)
            N = ids.shape[1]
            col = torch.arange(N - 1, device=device)
            first = torch.tensor([N - len(r) + s - 1 for r, s in zip(rows, starts)], device=device)
            scored = col[None] >= first[:, None]  # predictions of the tokens after the prefix
            total = (tok * scored).sum(-1)
            out.append((total / scored.sum(-1).clamp_min(1)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


__all__ = ["LikelihoodReward", "PrefixState", "check_causal_lm"]
