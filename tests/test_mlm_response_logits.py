"""The masked-LM adapter runs its output layer on the response slots only, with the values of the whole
forward sliced to float rounding (a matmul over fewer rows may round differently; BERT layout: the embedded default pair's MiniLM and the tiny test MLM)."""

import torch

from entrgi.models.base import DiffusionLM
from entrgi.reward.base import position_ids_from


def check(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, 40, (3, 11), generator=g)
    attn = torch.ones_like(x)
    attn[0, :3] = 0  # a left-padded row
    pos = position_ids_from(attn)
    fast = model.response_logits(x, attn, pos, 4)
    whole = DiffusionLM.response_logits(model, x, attn, pos, 4)  # the base path: forward all, slice
    assert fast.shape == whole.shape == (3, 7, model.logit_width)
    assert torch.allclose(fast, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast[:, 1:], whole[:, :-1], rtol=1e-5, atol=1e-5)  # the slots line up


def test_tiny_mlm_head_runs_on_the_response_only(mlm):
    check(mlm)


def test_default_pair_head_runs_on_the_response_only():
    from entrgi.pair import load_pair
    model, _ = load_pair()
    calls = []
    head = model.module.cls
    hook = head.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    try:
        check(model)
    finally:
        hook.remove()
    assert calls[0] == (3, 7, model.module.config.hidden_size)  # the head saw the 7 response slots only
