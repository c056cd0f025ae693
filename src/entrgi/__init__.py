"""entrgi: reward-gradient guidance (EntRGi, APS, Expectation, Best-of-N) for masked diffusion LMs."""

from .config import GuidanceConfig, SamplerConfig
from .guidance import entropy_weight, reward_input_embeddings
from .models.base import DiffusionLM
from .particles import ParticleConfig, ParticleSampler, generate_particles
from .outputs import ComputeStats, GenerationOutput, Sample, StepTrace
from .reward.base import RewardModel
from .reward.vocab import VocabBridge
from .sampler import MaskedDiffusionSampler, generate

__version__ = "0.1.0"

__all__ = [
    "ComputeStats", "DiffusionLM", "GenerationOutput", "GuidanceConfig", "MaskedDiffusionSampler",
    "ParticleConfig", "ParticleSampler", "RewardModel",
    "Sample", "SamplerConfig", "StepTrace", "VocabBridge", "entropy_weight", "generate", "generate_particles",
    "reward_input_embeddings",
]
