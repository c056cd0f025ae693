"""Reward models read through input embeddings, and the DLLM -> RM vocabulary bridge."""

from .base import RewardBatch, RewardContext, RewardModel
from .hf import HFRewardModel
from .vocab import CoverageReport, VocabBridge

__all__ = ["CoverageReport", "HFRewardModel", "RewardBatch", "RewardContext", "RewardModel", "VocabBridge"]
