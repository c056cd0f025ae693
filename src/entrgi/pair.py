"""Loading the (diffusion LM, reward) pair from the spellings of ``entrgi generate``, ``eval`` and ``serve``.

One rule for every front end: neither given = the embedded default pair; a reward needs a model (the
default DLLM is not paired with other rewards); a model without a reward only when every method is
``none``. The reward spelling is :func:`~entrgi.reward.registry.load_reward`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dtypes import dtype_from_name


def check_pair(model: str | None, reward: str | None, methods: Sequence[str], *,
               flags: tuple[str, str] = ("--model", "--reward")) -> None:
    """``ValueError`` (naming ``flags``, the model's and the reward's) unless the pair follows the rule above."""
    m, r = flags
    if model is None and reward is not None:
        raise ValueError(f"`{r}` needs `{m}` (the embedded pair's DLLM reads only its own vocabulary); give both, "
                         "or neither for the embedded default pair.")
    needing = list(dict.fromkeys(x for x in methods if x != "none"))
    if model is not None and reward is None and needing:
        what = f"method {needing[0]!r}" if len(needing) == 1 else f"methods {needing}"
        raise ValueError(f"`{r}` is required with `{m}` for {what} (only method 'none' samples without a reward "
                         "model).")


def check_differentiable(reward, spec: str | None, needs: str) -> None:
    """``ValueError`` when ``reward`` is not a :class:`~entrgi.reward.base.RewardModel` (e.g. a text reward, which
    scores decoded text only) but the run ``needs`` one (``needs`` says for what)."""
    from .reward.base import RewardModel

    if reward is not None and not isinstance(reward, RewardModel):
        raise ValueError(f"reward {spec!r} ({type(reward).__name__}) scores decoded text only; {needs} needs a "
                         "differentiable reward model (an HF sequence classifier or likelihood: reward). Use it with "
                         "methods none / best_of_n.")


def load_pair(model: str | None = None, reward: str | None = None, *, methods: Sequence[str] = ("none",),
              family: str | None = None, dtype=None, device="cpu", device_map=None, reward_template: str = "auto",
              rm_checkpointing: bool = False, flags: tuple[str, str] = ("--model", "--reward")):
    """``(diffusion LM, reward or None)``: the embedded default pair when neither is given, else ``model`` (hub id or
    folder, :func:`~entrgi.models.load_diffusion_lm`) and ``reward`` (any spelling of
    :func:`~entrgi.reward.registry.load_reward`), after :func:`check_pair` with ``methods``."""
    check_pair(model, reward, methods, flags=flags)
    dtype = dtype_from_name(dtype, "`--dtype`" if flags[0].startswith("--") else "`dtype`")
    if model is None:
        from .default_pair import load_default_pair
        return load_default_pair(device=device, dtype=dtype)
    from .models import load_diffusion_lm
    from .reward.registry import load_reward, split_reward_spec

    if reward is not None:
        split_reward_spec(reward)  # a misspelt kind fails before the model loads
    dllm = load_diffusion_lm(model, family=family, dtype=dtype, device=device, device_map=device_map)
    if reward is None:
        return dllm, None
    return dllm, load_reward(reward, device=device, dtype=dtype, device_map=device_map, template=reward_template,
                             gradient_checkpointing=rm_checkpointing)




def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a string that names no device, or a CUDA / MPS / XPU device this machine lacks."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`{flag}` {device!r} is not a device: use cpu, cuda or cuda:N (N = GPU index).") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"`{flag}` {device!r}: CUDA is not available ({why}); use `{flag} cpu` "
                             "(or install a CUDA build of torch on a GPU machine).")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"`{flag}` {device!r}: this machine has {n} CUDA device(s), cuda:0 .. cuda:{n - 1}.")
    elif dev.type != "cpu" and not getattr(getattr(torch, dev.type, None), "is_available", lambda: False)():
        raise ValueError(f"`{flag}` {device!r}: no {dev.type} device is available here; use `{flag} cpu`.")


__all__ = ["check_device", "check_differentiable", "check_pair", "load_pair"]
