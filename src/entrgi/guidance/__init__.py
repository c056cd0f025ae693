"""Reward-gradient guidance: the mixing maths as pure functions (:mod:`.mixing`, docs/method.md §2), the guidance
rules and optimisers by name (:mod:`.rules`, :mod:`.optimizers`), the inner loop that optimises the open slots'
logits (:mod:`.inner_loop`, docs/method.md §3) and the guidance schedules (:mod:`.schedules`)."""

from .inner_loop import GuideResult, guide_logits
from .mixing import entropy_weight, mixing_weight, reward_input_embeddings
from .optimizers import Optimizer, get_optimizer, list_optimizers, register_optimizer
from .rules import GuidanceRule, get_guidance_rule, list_guidance_rules, register_guidance_rule

__all__ = ["GuidanceRule", "GuideResult", "Optimizer", "entropy_weight", "get_guidance_rule", "get_optimizer",
           "guide_logits", "list_guidance_rules", "list_optimizers", "mixing_weight", "register_guidance_rule",
           "register_optimizer", "reward_input_embeddings"]
