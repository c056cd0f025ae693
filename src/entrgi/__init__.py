"""entrgi: reward-gradient guidance (EntRGi, APS, Expectation, Best-of-N, particles) for masked diffusion LMs.

The front door: load a pair, configure a run, generate; the step API for your own loop; the registries of the parts
people extend. Everything else lives in its subpackage (``entrgi.models``, ``entrgi.reward``, ``entrgi.guidance``,
``entrgi.sampling``, ``entrgi.eval``).
"""

from .config import GuidanceConfig, SamplerConfig, SearchConfig
from .errors import NonFiniteError
from .guidance.mixing import entropy_weight, reward_input_embeddings
from .guidance.optimizers import Optimizer, get_optimizer, list_optimizers, register_optimizer
from .guidance.rules import GuidanceRule, get_guidance_rule, list_guidance_rules, register_guidance_rule
from .models.base import DiffusionLM
from .models.registry import get_family, list_families, load_diffusion_lm, register_family
from .pair import load_pair
from .plugins import load_plugin
from .presets import Preset, get_preset, list_presets, register_preset
from .reward.base import RewardModel
from .reward.registry import get_reward, list_rewards, load_reward, register_reward
from .sampling.outputs import ComputeStats, GenerationOutput, Sample, StepTrace
from .sampling.remasking import RemaskingRule, get_remasking_rule, list_remasking_rules, register_remasking_rule
from .sampling.sampler import DiffusionSampler, generate
from .sampling.search import SearchStrategy, get_search, list_searches, register_search
from .sampling.state import DenoisingState, Row, StepOutput
from .settings import RunSettings, model_defaults, resolve_settings
from .version import __version__

__all__ = [
    "__version__",
    # load and generate
    "load_pair", "load_diffusion_lm", "load_reward", "load_plugin", "generate", "DiffusionLM", "RewardModel",
    # configure a run
    "SamplerConfig", "GuidanceConfig", "SearchConfig", "RunSettings", "resolve_settings", "model_defaults",
    # what a run returns
    "GenerationOutput", "Sample", "StepTrace", "ComputeStats", "NonFiniteError",
    # the step API
    "DiffusionSampler", "DenoisingState", "Row", "StepOutput",
    # the maths as pure functions
    "entropy_weight", "reward_input_embeddings",
    # registries: register_*, get_*, list_*
    "register_family", "get_family", "list_families",
    "Preset", "register_preset", "get_preset", "list_presets",
    "GuidanceRule", "register_guidance_rule", "get_guidance_rule", "list_guidance_rules",
    "Optimizer", "register_optimizer", "get_optimizer", "list_optimizers",
    "RemaskingRule", "register_remasking_rule", "get_remasking_rule", "list_remasking_rules",
    "SearchStrategy", "register_search", "get_search", "list_searches",
    "register_reward", "get_reward", "list_rewards",
]
