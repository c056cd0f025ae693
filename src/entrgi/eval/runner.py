"""Run an evaluation grid, resumably, one JSONL record per (prompt, cell) as soon as it exists.

A *cell* is (prompt set, method, temperature τ, seed). For each cell the runner generates K samples
per prompt, re-scores them with the guiding RM on discrete text, applies the judges and metrics, and
appends one record per prompt to ``results[.rankR-of-W].jsonl``. Each record is keyed by a hash of
the run identity, the cell and the prompt, so an interrupted run resumes where it stopped, and a
record never depends on the number of workers: prompts are sharded round-robin over data-parallel
workers (``torchrun``/``accelerate launch`` set RANK/WORLD_SIZE/LOCAL_RANK), and every sample has
its own random stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import GUIDED_METHODS
from ..outputs import GenerationOutput
from .config import APS_ANCHORED, MATCHED_BON, PARTICLE_METHODS, EvalConfig, split_method
from .judges import Judge, load_judge
from .metrics import avg, distinct_n, pseudo_perplexity, top1
from .prompts import Prompt, load_prompt_set

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """The data-parallel position set by torchrun / accelerate (RANK, WORLD_SIZE)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def results_file(self, out: Path) -> Path:
        return out / ("results.jsonl" if self.world == 1 else f"results.rank{self.rank}-of-{self.world}.jsonl")


@dataclass(frozen=True)
class Cell:
    prompt_set: str
    method: str
    temperature: float
    seed: int


def record_key(identity: str, set_name: str, cell: Cell, prompt: Prompt, num_samples: int) -> str:
    blob = json.dumps([identity, set_name, cell.method, cell.temperature, cell.seed, prompt.id, prompt.text,
                       num_samples])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every complete record in ``out/results*.jsonl`` (a torn last line from a kill is skipped)."""
    records = []
    for path in sorted(Path(out).glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a kill loses at most the line being written)."""
    with path.open("a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                f.write("\n")  # a previous run died mid-line
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_run_dir(cfg: EvalConfig, out: Path) -> None:
    """Create ``run.json`` or refuse to mix results of a different identity into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "run.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        new = json.loads(json.dumps(cfg.identity(), default=list))
        diff = sorted(k for k in set(old["identity"]) | set(new) if old["identity"].get(k) != new.get(k))
        if diff:
            raise ValueError(f"run directory {str(out)!r} holds results of a different configuration (differs in "
                             f"{diff}); use a new `out` directory or restore those settings.")
    else:
        meta.write_text(json.dumps({"identity": cfg.identity(), "identity_hash": cfg.identity_hash(),
                                    "config": cfg.to_dict(), "created": time.strftime("%Y-%m-%d %H:%M:%S")},
                                   indent=1))


class EvalRunner:
    """Loads the models once and runs the cells of an :class:`EvalConfig`."""

    def __init__(self, cfg: EvalConfig, *, shard: Shard | None = None, model=None, reward=None,
                 judges: list[Judge] | None = None, progress: bool = True):
        self.cfg = cfg
        self.shard = shard or Shard.from_env()
        self.out = Path(cfg.out)
        self.progress = progress
        self.device = cfg.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
        self.model, self.reward = (model, reward) if model is not None else self._load_pair()
        self.judges = judges if judges is not None else [load_judge(j, device=self.device) for j in cfg.judges]

    def _load_pair(self):
        cfg = self.cfg
        dtype = DTYPES.get(cfg.dtype) if cfg.dtype else None
        model = reward = None
        if cfg.model is None or cfg.reward is None:
            from ..default_pair import load_default_pair
            model, reward = load_default_pair(device=self.device)
        if cfg.model is not None:
            from ..models import load_diffusion_lm
            model = load_diffusion_lm(cfg.model, family=cfg.family, dtype=dtype, device=self.device)
        if cfg.reward is not None:
            from ..reward.hf import HFRewardModel
            reward = HFRewardModel.from_pretrained(cfg.reward, dtype=dtype, device=self.device,
                                                   template=cfg.reward_template)
        return model, reward

    # ---- the grid -------------------------------------------------------------------------------
    def cells(self) -> Iterator[Cell]:
        """Plain methods first (seed-major), compute-matched Best-of-N last (it needs their timings)."""
        cfg = self.cfg
        plain = [m for m in cfg.methods if m != MATCHED_BON]
        for group in (plain, [m for m in cfg.methods if m == MATCHED_BON]):
            for ps in cfg.prompt_sets:
                for seed in cfg.seeds:
                    for t in cfg.temperatures:
                        for m in group:
                            yield Cell(ps, m, t, seed)

    def run(self) -> Path:
        cfg = self.cfg
        check_run_dir(cfg, self.out)
        sets = {ps: load_prompt_set(ps) for ps in cfg.prompt_sets}
        self.set_names = {ps: sets[ps].name for ps in cfg.prompt_sets}
        identity = cfg.identity_hash()
        done = {r["key"] for r in read_records(self.out)}
        path = self.shard.results_file(self.out)
        work = []
        for cell in self.cells():
            prompts = sets[cell.prompt_set].subsample(cfg.n_prompts, cfg.subsample, cell.seed, cfg.subset_seed)
            mine = [p for j, p in enumerate(prompts) if j % self.shard.world == self.shard.rank]
            work.append((cell, mine))
        total = sum(len(m) for _, m in work)
        bar = tqdm(total=total, disable=not self.progress, desc="eval", unit="prompt")
        for cell, prompts in work:
            k = self.num_samples(cell)
            todo = [p for p in prompts if record_key(identity, self.set_names[cell.prompt_set], cell, p, k) not in done]
            bar.update(len(prompts) - len(todo))
            bar.set_postfix_str(f"{cell.prompt_set} {cell.method} τ={cell.temperature} seed={cell.seed}")
            for lo in range(0, len(todo), cfg.prompts_per_batch):
                batch = todo[lo:lo + cfg.prompts_per_batch]
                for rec in self.evaluate(cell, batch, k, identity):
                    append_record(path, rec)
                    done.add(rec["key"])
                bar.update(len(batch))
        bar.close()
        return self.out

    def num_samples(self, cell: Cell) -> int:
        """K for plain cells; for compute-matched Best-of-N, N = K × (guided time / BoN time)."""
        k = self.cfg.sampler_config(cell.temperature, cell.seed).num_samples
        base, n = split_method(cell.method)
        if n is not None:
            return n
        if base != MATCHED_BON:
            return k
        if self.cfg.matched_bon_n is not None:
            return self.cfg.matched_bon_n
        if self.shard.world > 1:
            raise ValueError("`matched_bon_n` must be set for sharded runs (timings differ across workers).")
        # Fixed once per (prompt set, τ) and stored, so that every seed and every resume uses the same N.
        path = self.out / "matched_n.json"
        fixed = json.loads(path.read_text()) if path.exists() else {}
        key = f"{self.set_names[cell.prompt_set]}|{cell.temperature}"
        if key not in fixed:
            fixed[key] = matched_n(read_records(self.out), self.set_names[cell.prompt_set], cell.temperature, k)
            path.write_text(json.dumps(fixed, indent=1))
        return fixed[key]

    # ---- one batch of prompts -------------------------------------------------------------------
    def generate(self, cell: Cell, prompts: list[Prompt], k: int) -> GenerationOutput:
        cfg = self.cfg
        sampler = cfg.sampler_config(cell.temperature, cell.seed, num_samples=k, method=cell.method)
        texts = [p.text for p in prompts]
        if split_method(cell.method)[0] in PARTICLE_METHODS:
            from ..particles import generate_particles
            return generate_particles(self.model, texts, self.reward, sampler=sampler,
                                      guidance=cfg.guidance_config(cell.method),
                                      particles=cfg.particle_config(cell.method), progress=False,
                                      track_reward=cfg.track_reward)
        from ..sampler import generate
        return generate(self.model, texts, self.reward, sampler=sampler, guidance=cfg.guidance_config(cell.method),
                        progress=False, track_reward=cfg.track_reward)

    def evaluate(self, cell: Cell, prompts: list[Prompt], k: int, identity: str) -> list[dict[str, Any]]:
        out = self.generate(cell, prompts, k)
        n = len(prompts)
        stats = out.stats
        records = []
        for i, p in enumerate(prompts):
            group = out.samples[i]
            texts = [s.text for s in group]
            rewards = [s.reward for s in group]
            best = max(range(len(group)), key=lambda j: rewards[j])
            samples = [{"text": s.text, "reward": s.reward} for s in group]
            judges = {}
            for judge in self.judges:
                idx = list(range(len(group))) if judge.on == "all" else [best]
                scores = judge.score([p.text] * len(idx), [texts[j] for j in idx])
                for j, sc in zip(idx, scores):
                    samples[j].setdefault("judges", {})[judge.name] = sc
                judges[judge.name] = {"top1": scores[idx.index(best)],
                                      "avg": avg(scores) if judge.on == "all" else None}
            name = self.set_names[cell.prompt_set]
            rec = {
                "key": record_key(identity, name, cell, p, k), "prompt_set": name, "prompt_id": p.id,
                "prompt": p.text, "method": cell.method, "temperature": cell.temperature, "seed": cell.seed,
                "num_samples": k, "top1": top1(rewards), "avg": avg(rewards), "best_index": best,
                "judges": judges, "distinct": {str(m): distinct_n(texts, m) for m in self.cfg.distinct_n},
                "samples": samples, "curves": curves(group),
                "compute": {"wall_time_s": stats.wall_time_s / n, "dllm_forwards": stats.dllm_forwards / n,
                            "rm_forwards": stats.rm_forwards / n, "rm_backwards": stats.rm_backwards / n},
                "rank": self.shard.rank,
            }
            if self.cfg.perplexity:
                ppl = pseudo_perplexity(self.model, p.text, [s.token_ids for s in group])
                for s, v in zip(samples, ppl):
                    s["ppl"] = v
                finite = [v for v in ppl if math.isfinite(v)]
                rec["ppl"] = {"top1": ppl[best], "avg": avg(finite) if finite else math.nan}
            records.append(rec)
        return records


def curves(group) -> dict[str, list[list[float | None]]]:
    """Per sample, per step: RM estimate of the predicted completion, mean entropy weight, and the
    reward after the inner steps (guided methods)."""
    out: dict[str, list] = {"estimate": [], "entropy_weight": [], "inner_reward": []}
    for s in group:
        trace = s.trace or []
        out["estimate"].append([t.estimate for t in trace])
        out["entropy_weight"].append([t.entropy_weight for t in trace])
        out["inner_reward"].append([t.rewards[-1] if t.rewards else None for t in trace])
    return out


def matched_n(records: list[dict[str, Any]], set_name: str, temperature: float, k: int) -> int:
    """N such that Best-of-N costs the wall time of the slowest guided method in the same
    (prompt set, τ): K × t_guided / t_BoN, from the records measured so far."""
    def mean_time(method):
        ts = [r["compute"]["wall_time_s"] for r in records if r["method"] == method
              and r["prompt_set"] == set_name and r["temperature"] == temperature]
        return sum(ts) / len(ts) if ts else None
    t_bon = mean_time("best_of_n") or mean_time("none")  # unguided sampling costs the same
    guided = [t for t in (mean_time(m) for m in (*GUIDED_METHODS, APS_ANCHORED, *PARTICLE_METHODS)) if t is not None]
    if t_bon is None or not guided:
        raise ValueError("best_of_n_matched needs `best_of_n` (or `none`) and a guided method in the same run "
                         "(or set `matched_bon_n`).")
    return max(k, round(k * max(guided) / t_bon))


def run_eval(cfg: EvalConfig, **kwargs) -> Path:
    """Run (or resume) an evaluation; returns the run directory."""
    return EvalRunner(cfg, **kwargs).run()
