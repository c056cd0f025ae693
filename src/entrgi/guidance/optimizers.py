"""Optimisers of the inner loop on the guided logits φ, by name (``GuidanceConfig.optimizer``).

An optimiser is a factory ``make(params, lr, **own) -> torch.optim.Optimizer`` with declared parameters of its
own (``GuidanceConfig.optimizer_params``); the inner loop minimises −Σ R (plus its penalty terms), so a step of
plain gradient descent on that loss is ascent on the reward. A fresh optimiser (fresh state) is made at every
denoising step, as the released code does. Built-ins: ``adam`` (the released code's) and ``ascent`` (the
poster's φ ← φ + lr·∇R). docs/extending.md shows a user optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..registry import OPTIMIZERS, check_params, origin_of

#: ``make(params, lr, **own_params) -> torch.optim.Optimizer``.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class Optimizer:
    """A named optimiser factory and its declared parameters (name -> default)."""

    name: str
    make: OptimizerFactory
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, tensors: Sequence[torch.Tensor], lr: float, **params: Any) -> torch.optim.Optimizer:
        return self.make(list(tensors), lr, **{**self.params, **params})


def register_optimizer(optimizer: str | Optimizer, make: OptimizerFactory | None = None, *, description: str = "",
                       params: Mapping[str, Any] | None = None):
    """Register an optimiser: an :class:`Optimizer`, a name and a factory, or as a decorator
    ``@register_optimizer("name", params={...})`` on the factory (returned unchanged)."""
    if isinstance(optimizer, Optimizer):
        if make is not None:
            raise ValueError("give either an Optimizer or a name and a factory, not both.")
        return OPTIMIZERS.register(optimizer.name, optimizer, origin=origin_of(optimizer.make))
    if make is None:
        def decorate(fn: OptimizerFactory) -> OptimizerFactory:
            register_optimizer(optimizer, fn, description=description, params=params)
            return fn
        return decorate
    if not callable(make):
        raise ValueError(f"optimizer {optimizer!r} needs a factory (params, lr, **own) -> torch.optim.Optimizer, got "
                         f"{type(make).__name__}.")
    declared = dict(params or {})
    check_params(f"optimizer {optimizer!r}", declared, declared)
    return OPTIMIZERS.register(optimizer, Optimizer(optimizer, make, description, declared), origin=origin_of(make))


def get_optimizer(name: str | Optimizer) -> Optimizer:
    """The optimiser registered as ``name`` (an :class:`Optimizer` is returned as is)."""
    return name if isinstance(name, Optimizer) else OPTIMIZERS.get(name)


def list_optimizers() -> list[str]:
    """Every registered optimiser, built-ins first."""
    return OPTIMIZERS.names()


def make_optimizer(name: str | Optimizer, tensors: Sequence[torch.Tensor], lr: float,
                   params: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """A fresh optimiser ``name`` over ``tensors`` with step size ``lr`` and its ``params``."""
    return get_optimizer(name)(tensors, lr, **(params or {}))


def _adam(tensors: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel over the (n, V) state) on CPU and CUDA: ~6× fewer passes than the per-op
    implementation, the same update to float rounding."""
    fused = all(t.device.type in ("cpu", "cuda") and t.dtype in (torch.float32, torch.float64) for t in tensors)
    return torch.optim.Adam(tensors, lr=lr, fused=fused or None)


def _ascent(tensors: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Plain gradient steps on −R, no momentum: φ ← φ + lr·∇R (the poster's rule, lr = 1/β)."""
    return torch.optim.SGD(tensors, lr=lr)


for _opt in (Optimizer("adam", _adam, "Adam(lr), fresh state at each denoising step (the released code)"),
             Optimizer("ascent", _ascent, "φ ← φ + lr·∇R (the poster's rule)")):
    OPTIMIZERS.register(_opt.name, _opt, origin=__name__, builtin=True)

__all__ = ["Optimizer", "OptimizerFactory", "get_optimizer", "list_optimizers", "make_optimizer",
           "register_optimizer"]
