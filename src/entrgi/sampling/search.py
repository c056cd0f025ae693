"""Search strategies by name: what is searched for each prompt, whatever the guidance rule (``SearchConfig.strategy``).

- ``sample``: K independent trajectories (guided by the rule, if any);
- ``best_of_n``: the same K trajectories ranked by the reward (it needs one): the Top@1 is Best-of-N's pick;
- ``particles``: K particles resampled by the reward of their predicted completion (:mod:`.particles`).

A strategy adds observers to the loop (``observers(sampler, state)``); a registered one is a valid
``SearchConfig.strategy`` / ``--search`` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import SEARCH_STRATEGIES, origin_of
from .particles import ParticleResampler
from .state import DenoisingState, StepObserver

#: ``observers(sampler, state) -> [StepObserver, ...]``: run after every step, after the trace.
ObserverFactory = Callable[[Any, DenoisingState], list[StepObserver]]


@dataclass(frozen=True)
class SearchStrategy:
    """A search strategy: whether it needs a reward, whether a prompt's K rows must run in one batch
    (``whole_groups``) and the observers it adds to the loop."""

    name: str
    needs_reward: bool = False
    whole_groups: bool = False
    observers: ObserverFactory | None = None
    description: str = ""


def register_search(strategy: SearchStrategy) -> SearchStrategy:
    """Register ``strategy`` under its name (a built-in name cannot be taken)."""
    if not isinstance(strategy, SearchStrategy):
        raise ValueError(f"register_search takes a SearchStrategy, got {type(strategy).__name__}.")
    return SEARCH_STRATEGIES.register(strategy.name, strategy, origin=origin_of(strategy.observers or strategy))


def get_search(name: str | SearchStrategy) -> SearchStrategy:
    """The strategy registered as ``name`` (a :class:`SearchStrategy` is returned as is)."""
    return name if isinstance(name, SearchStrategy) else SEARCH_STRATEGIES.get(name)


def list_searches() -> list[str]:
    """Every registered search strategy, built-ins first."""
    return SEARCH_STRATEGIES.names()


def particle_observers(sampler: Any, state: DenoisingState) -> list[StepObserver]:
    """The particles' resampler, weighing by the sampler's potential reward (text) or the reward model's estimate."""
    return [ParticleResampler(state.search, state, sampler.model, sampler.potential_reward(state.search),
                              log=sampler.search_log)]


for _strategy in (
    SearchStrategy("sample", description="K independent trajectories"),
    SearchStrategy("best_of_n", needs_reward=True, description="K trajectories ranked by the reward"),
    SearchStrategy("particles", needs_reward=True, whole_groups=True, observers=particle_observers,
                   description="K particles resampled by the reward of their predicted completion (SMC)"),
):
    SEARCH_STRATEGIES.register(_strategy.name, _strategy, origin=__name__, builtin=True)

__all__ = ["SearchStrategy", "get_search", "list_searches", "register_search"]
