"""Any Hugging Face ``*ForSequenceClassification`` as a reward model (Skywork-Reward-V2 and others).

Decoder classifiers (the ``GenericForSequenceClassification`` family) run as base model + score head,
read at each row's last attended position, and support the prefix cache through a read-only cache layer
(:class:`FrozenPrefixLayer`). Other classifiers (BERT-style) are called as they are (docs/rewards.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer

from ..hub import check_hf_folder, config_vocab_size, load_auto_tokenizer, local_folder, read_config
from .base import RewardModel, left_pad, position_ids_from


def last_attended(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of each row's last position with mask 1."""
    idx = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (idx * attention_mask.long()).argmax(-1)


def check_sequence_classifier(config: dict, where) -> None:
    """Refuse a config.json that is not a ``*ForSequenceClassification`` transformers implements (a DLLM,
    a causal or masked LM): loading it would add a random score head or ask for remote code."""
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"`{where}` is not a sequence classifier (architectures: {archs}, model_type: "
                         f"{config.get('model_type')!r}); a reward model must be a *ForSequenceClassification "
                         "checkpoint such as Skywork/Skywork-Reward-V2-Qwen3-1.7B.")
    from transformers import CONFIG_MAPPING
    if config.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(f"`{where}` has model_type {config.get('model_type')!r}, which transformers does not "
                         "implement; its remote code is never run. Wrap the module with `HFRewardModel(model, "
                         "tokenizer)` yourself.")


class FrozenPrefixLayer(DynamicLayer):
    """A cache layer holding a prefix's keys/values (B, h_kv, P, d_h) that ``update`` never changes:
    it returns ``cat(prefix, new)`` and forgets ``new``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def _layer_cache(output) -> Cache:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class HFRewardModel(RewardModel):
    """Wrap a sequence classifier and its tokenizer.

    Args:
        model: an HF ``*ForSequenceClassification`` (frozen here).
        tokenizer: its tokenizer.
        template: see :class:`~entrgi.reward.base.RewardModel`; Skywork-Reward-V2 uses ``chat``
            (its chat template, no system prompt).
        label: which output logit is the reward (Skywork: the single label 0).
    """

    def __init__(self, model, tokenizer, template: str = "auto", label: int = 0):
        super().__init__(tokenizer, template)
        num_labels = getattr(model.config, "num_labels", 1)
        if not 0 <= label < num_labels:
            raise ValueError(f"`label` must be in [0, {num_labels - 1}], got {label}.")
        self.model = model.eval().requires_grad_(False)
        self.label = label
        self.decoder_head = isinstance(model, GenericForSequenceClassification)
        self._takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self._cache_kwarg = None
        self._compiled = None
        if self.decoder_head:
            params = inspect.signature(self._base.forward).parameters
            self._cache_kwarg = next((k for k in ("cache", "past_key_values") if k in params), None)

    @property
    def _base(self):
        return getattr(self.model, self.model.base_model_prefix)

    def enable_compile(self, **options) -> None:
        """Run the base decoder through ``torch.compile(**options)`` from now on (decoder classifiers only;
        the first calls of each new input shape compile). ``GuidanceConfig(compile=True)`` calls this."""
        if self.decoder_head and self._compiled is None:
            self._compiled = torch.compile(self._base, **options)

    @property
    def supports_prefix_cache(self) -> bool:
        """Decoder classifiers with full (not sliding-window) attention and a cache argument."""
        if not self.decoder_head or self._cache_kwarg is None:
            return False
        cfg = self.model.config
        kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        return kinds == {"full_attention"} and not getattr(cfg, "use_sliding_window", False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, device_map=None, template: str = "auto",
                        label: int = 0, gradient_checkpointing: bool = False) -> HFRewardModel:
        """Load with ``AutoModelForSequenceClassification`` (hub id or local folder, no remote code).

        ``device_map`` places the model with accelerate (``"auto"``, ``"balanced"`` or a dict, for RMs
        larger than one device); otherwise ``device`` holds all of it. A path that is not an existing
        folder, a folder without config.json or complete weights, a config that is not a sequence
        classifier transformers implements, or an unusable tokenizer raise ``ValueError`` first."""
        folder = local_folder(name_or_path)
        config = read_config(folder if folder is not None else name_or_path)
        check_sequence_classifier(config, name_or_path)
        if folder is not None:
            check_hf_folder(folder)
        tokenizer = load_auto_tokenizer(name_or_path, config_vocab_size(config))
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dtype, device_map=device_map,
                                                                   trust_remote_code=False)
        if device is not None and device_map is None:
            model = model.to(device)
        if gradient_checkpointing:
            model.activation_checkpointing_enable()
        return cls(model, tokenizer, template=template, label=label)

    def embedding_table(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def _run_base(self, cache: Cache | None = None, **inputs) -> torch.Tensor:
        """The base decoder's last hidden states (B, N, h), checkpointed when enabled and gradients flow."""
        base = self._base
        # HF checkpoints activations only in train mode; switch just for this call when gradients flow.
        checkpoint = self.model.is_activation_checkpointing and torch.is_grad_enabled()
        layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)] if cache is not None else []
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        saved = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
        base.train(checkpoint)
        for m in layers:  # the frozen prefix cache is read-only: a checkpointed layer may replay with it
            m._can_checkpoint_with_cache = True
        try:
            run = base if self._compiled is None else self._compiled
            return run(**inputs, **kwargs, use_cache=False).last_hidden_state
        finally:
            base.eval()
            for m, v in zip(layers, saved):
                if v is None:
                    del m._can_checkpoint_with_cache
                else:
                    m._can_checkpoint_with_cache = v

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> torch.Tensor:
        if self.decoder_head:
            hidden = self._run_base(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                    position_ids=position_ids)  # (B, N, h)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_attended(attention_mask)]  # (B, h)
            return self.model.score(pooled)[:, self.label].float()
        kwargs = {"position_ids": position_ids} if self._takes_positions else {}
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return out.logits[:, self.label].float()

    @torch.no_grad()
    def encode_prefix(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) (B, h_kv, P, d_h) of the prefix; padding rows zeroed (never attended)."""
        if not self.supports_prefix_cache:
            raise ValueError(f"{type(self.model).__name__} does not support the prefix cache.")
        base = self._base
        base.eval()
        out = base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=True)
        keep = attention_mask.bool()[:, None, :, None]
        return [(layer.keys.masked_fill(~keep, 0.0), layer.values.masked_fill(~keep, 0.0))
                for layer in _layer_cache(out).layers]

    def forward_embeds_cached(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], inputs_embeds: torch.Tensor,
                              attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        cache = Cache(layers=[FrozenPrefixLayer(k, v) for k, v in prefix])
        hidden = self._run_base(cache, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                position_ids=position_ids)  # (B, T, h)
        P = attention_mask.shape[1] - hidden.shape[1]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_attended(attention_mask) - P]  # (B, h)
        return self.model.score(pooled)[:, self.label].float()

    @torch.no_grad()
    def score_texts_released(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards (B,) as the released code re-scores a decoded response (``SamplerConfig.match_released``):
        one text at a time, the chat template rendered with the response itself (a template may change it, e.g.
        Qwen3's strips leading newlines of the last assistant turn), a leading BOS string removed, tokenised with
        the tokenizer's special tokens and run with no padding and no position ids. ``template`` must be chat."""
        if self.template != "chat":
            raise ValueError(f"`template` must be 'chat' for the released re-scoring, got {self.template!r}.")
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        device = self.embedding_table().device
        bos = self.tokenizer.bos_token
        out = []
        for p, r in zip(prompts, responses):
            conv = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            text = self.tokenizer.apply_chat_template(conv, tokenize=False)
            if bos and text.startswith(bos):
                text = text[len(bos):]
            inputs = self.tokenizer(text, return_tensors="pt").to(device)
            out.append(self.model(**inputs).logits[0, self.label].float().cpu())
        return torch.stack(out) if out else torch.zeros(0)

    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """The standard recipe: render the template with the response, tokenise the whole text, run
        the classifier on ``input_ids`` (left-padded) and read its pooled logit."""
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) differ in length.")
        device = self.embedding_table().device
        out = []
        for i in range(0, len(prompts), batch_size):
            rows = []
            for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size]):
                text = "".join(self.render(p, r))
                ids = list(self.tokenizer(text)["input_ids"])
                bos = getattr(self.tokenizer, "bos_token_id", None)
                if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
                    ids = ids[1:]  # the template already wrote a BOS
                rows.append(ids)
            input_ids, attn = left_pad(rows, self.pad_token_id, device)
            kwargs = {"position_ids": position_ids_from(attn)} if self._takes_positions else {}
            logits = self.model(input_ids=input_ids, attention_mask=attn, **kwargs).logits
            out.append(logits[:, self.label].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
