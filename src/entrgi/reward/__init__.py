"""Reward models read through input embeddings, and the DLLM -> RM vocabulary bridge."""

from .base import RewardBatch, RewardContext, RewardModel
from .callable import CallableReward
from .composite import CompositeReward, CompositeTextReward, GuidanceView, weighted_sum
from .hf import HFRewardModel
from .likelihood import LikelihoodReward
from .reference import ReferenceReward
from .registry import list_rewards, load_reward, register_reward
from .text import TextReward, batched, load_text_reward
from .vocab import CoverageReport, VocabBridge

__all__ = ["CallableReward", "CompositeReward", "CompositeTextReward", "CoverageReport", "GuidanceView",
           "HFRewardModel", "LikelihoodReward", "ReferenceReward", "RewardBatch", "RewardContext", "RewardModel",
           "TextReward",
           "VocabBridge", "batched", "load_reward", "load_text_reward", "register_reward", "list_rewards",
           "weighted_sum"]
