"""entrgi: reward-gradient guidance (EntRGi, APS, Expectation, Best-of-N) for masked diffusion LMs."""

from .config import GuidanceConfig, SamplerConfig
from .guidance.mixing import entropy_weight, reward_input_embeddings
from .models.base import DiffusionLM
from .reward.base import RewardModel
from .reward.vocab import VocabBridge
from .sampling.outputs import ComputeStats, GenerationOutput, Sample, StepTrace
from .sampling.particles import ParticleConfig, ParticleSampler, generate_particles
from .sampling.sampler import MaskedDiffusionSampler, generate

__version__ = "0.1.0"

__all__ = [
    "ComputeStats", "DiffusionLM", "GenerationOutput", "GuidanceConfig", "MaskedDiffusionSampler",
    "ParticleConfig", "ParticleSampler", "RewardModel",
    "Sample", "SamplerConfig", "StepTrace", "VocabBridge", "entropy_weight", "generate", "generate_particles",
    "reward_input_embeddings",
]
