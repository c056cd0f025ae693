"""Reward models read through input embeddings, and the DLLM -> RM vocabulary bridge."""

from .base import RewardBatch, RewardContext, RewardModel
from .callable import CallableReward
from .hf import HFRewardModel
from .vocab import CoverageReport, VocabBridge

__all__ = ["CallableReward", "CoverageReport", "HFRewardModel", "RewardBatch", "RewardContext", "RewardModel",
           "VocabBridge"]
