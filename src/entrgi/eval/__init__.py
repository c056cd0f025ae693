"""Evaluation layer: prompt sources, judges, metrics, the resumable grid runner and the report."""

from .config import EvalConfig
from .judges import Judge, LMUnitJudge, RewardModelJudge, VaderJudge, load_judge
from .metrics import distinct_n, mean_sem, pseudo_perplexity
from .prompts import Prompt, PromptSet, load_prompt_set
from .records import read_records
from .report import write_report
from .runner import EvalRunner, Shard, run_eval

__all__ = ["EvalConfig", "EvalRunner", "Judge", "LMUnitJudge", "Prompt", "PromptSet", "RewardModelJudge", "Shard",
           "VaderJudge", "distinct_n", "load_judge", "load_prompt_set", "mean_sem", "pseudo_perplexity",
           "read_records", "run_eval", "write_report"]
