"""entrgi: reward-gradient guidance (EntRGi, APS, Expectation, Best-of-N) for masked diffusion LMs."""

from .config import GuidanceConfig, SamplerConfig
from .errors import NonFiniteError
from .guidance.mixing import entropy_weight, reward_input_embeddings
from .guidance.rules import GuidanceRule, get_guidance_rule, guidance_rule_names, register_guidance_rule
from .models.base import DiffusionLM
from .pair import load_pair
from .plugins import load_plugin
from .reward.base import RewardModel
from .reward.registry import load_reward, register_reward
from .reward.vocab import VocabBridge
from .sampling.outputs import ComputeStats, GenerationOutput, Sample, StepTrace
from .sampling.particles import ParticleConfig, ParticleSampler, generate_particles
from .sampling.remasking import RemaskingRule, get_remasking_rule, register_remasking_rule, remasking_rule_names
from .sampling.sampler import MaskedDiffusionSampler, generate
from .sampling.state import DenoisingState, Row, StepOutput
from .presets import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "ComputeStats", "DenoisingState", "DiffusionLM", "GenerationOutput", "GuidanceConfig", "GuidanceRule",
    "MaskedDiffusionSampler", "NonFiniteError", "ParticleConfig", "ParticleSampler", "RemaskingRule", "RewardModel",
    "Row", "Sample", "SamplerConfig", "StepOutput", "StepTrace", "get_preset",
    "VocabBridge", "entropy_weight", "generate", "generate_particles", "get_guidance_rule", "get_remasking_rule",
    "guidance_rule_names", "load_pair", "load_plugin", "load_reward", "register_guidance_rule",
    "register_remasking_rule", "register_reward", "remasking_rule_names", "reward_input_embeddings",
]
