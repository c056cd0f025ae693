"""Reward-gradient guidance: the mixing maths as pure functions (:mod:`.mixing`, docs/method.md §2), the guidance
rules by name (:mod:`.rules`) and the inner loop that optimises the masked slots' logits (:mod:`.inner_loop`,
docs/method.md §3)."""

from .inner_loop import GuideResult, guide_logits
from .mixing import entropy_weight, mixing_weight, reward_input_embeddings
from .rules import GuidanceRule, get_guidance_rule, guidance_rule_names, register_guidance_rule

__all__ = ["GuidanceRule", "GuideResult", "entropy_weight", "get_guidance_rule", "guidance_rule_names", "guide_logits",
           "mixing_weight", "register_guidance_rule", "reward_input_embeddings"]
