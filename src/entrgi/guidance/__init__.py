"""Reward-gradient guidance: the mixing maths as pure functions (:mod:`.mixing`, docs/method.md §2) and the
inner loop that optimises the masked slots' logits (:mod:`.inner_loop`, docs/method.md §3)."""

from .inner_loop import GuideResult, guide_logits
from .mixing import entropy_weight, reward_input_embeddings

__all__ = ["GuideResult", "entropy_weight", "guide_logits", "reward_input_embeddings"]
