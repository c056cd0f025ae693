"""Run an evaluation grid, resumably, one JSONL record per (prompt, cell) as soon as it exists.

A cell is (prompt set, method, τ, seed). Records are keyed by a hash of the run identity, the cell and the
prompt, so a run resumes where it stopped and never depends on the number of workers (prompts are sharded
round-robin). Records on disk (reading, appending, the one-writer lock): :mod:`entrgi.eval.records`. The run folder
is an :class:`~entrgi.files.OwnedFolder`: the runner replaces or appends to only the files its manifest proves
it wrote, and refuses a folder whose records are of another configuration. See docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
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

from ..config import guided_methods
from ..files import OwnedFolder
from ..sampling.outputs import GenerationOutput
from .config import (
    APS_ANCHORED,
    GRID_SET,
    MATCHED_BON,
    PARTICLE_METHODS,
    TEXT_SELECTED,
    EvalConfig,
    describe_difference,
    resolve_identity,
    split_method,
)
from .judges import Judge, load_judge, run_judge
from .metrics import avg, distinct_n, pseudo_perplexity, top1
from .prompts import Prompt, load_prompt_set
from .records import config_difference, configurations, load_results, read_records, results_lock


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and isinstance(self.world, int) and self.world >= 1
                and 0 <= self.rank < self.world):
            raise ValueError(f"a shard needs integers 0 <= rank < world (world >= 1), got rank={self.rank!r}, "
                             f"world={self.world!r}.")

    @classmethod
    def from_env(cls) -> Shard:
        """The data-parallel position set by torchrun / accelerate (RANK, WORLD_SIZE; unset = one process)."""
        raw = {name: os.environ.get(name, default) for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"))}
        try:
            rank, world = int(raw["RANK"]), int(raw["WORLD_SIZE"])
        except ValueError:
            rank = world = None
        if rank is None or world < 1 or not 0 <= rank < world:
            raise ValueError(f"environment variables RANK={raw['RANK']!r} and WORLD_SIZE={raw['WORLD_SIZE']!r} must be "
                             "integers with WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; launch the workers with "
                             "torchrun / accelerate launch, or unset both for a single process.")
        return cls(rank, world)

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


def check_run_dir(cfg: EvalConfig, out: Path, folder: OwnedFolder | None = None) -> str:
    """Create ``run.json`` (through ``folder``, which records it in its manifest) or refuse to mix results of a
    different identity into ``out``; returns the folder's identity hash (the one its records are keyed with).
    Identities compare on resolved values (every default filled in), so run.json files of older versions, which
    stored only the overrides, still resume."""
    out.mkdir(parents=True, exist_ok=True)
    folder = folder or OwnedFolder(out, kind="eval", command="entrgi eval")
    meta = out / "run.json"
    if meta.exists():
        try:
            stored = json.loads(meta.read_text())
            old_hash = stored["identity_hash"]
            old = resolve_identity(stored["identity"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{str(meta)!r} is unreadable ({e}); use a new `out` directory.") from e
        new = json.loads(json.dumps(cfg.identity(), default=list))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            detail = "; ".join(describe_difference(k, new.get(k), old.get(k)) for k in diff)
            raise ValueError(f"run directory {str(out)!r} holds results of a different configuration (differs in "
                             f"{diff}): {detail}. Use a new `out` directory or restore those settings.")
        return old_hash
    text = json.dumps({"identity": cfg.identity(), "identity_hash": cfg.identity_hash(), "config": cfg.to_dict(),
                       "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1, default=list)
    folder.write_text("run.json", text)  # atomic: data-parallel workers may race here
    return cfg.identity_hash()


def read_matched_n(folder: OwnedFolder) -> dict[str, int]:
    """The N of ``best_of_n_matched`` fixed so far per (prompt set, τ) (``matched_n.json``); a ``ValueError``
    naming the file when it is not such a mapping."""
    fixed = folder.read_json("matched_n.json", {})
    if not isinstance(fixed, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 1 for k, v in fixed.items()):
        raise ValueError(f"{str(folder.path / 'matched_n.json')!r} must map 'prompt set|τ' to a positive integer N, "
                         f"got {json.dumps(fixed)[:60]}; restore it, or delete it to fix N again.")
    return fixed


class EvalRunner:
    """Loads the models once and runs the cells of an :class:`EvalConfig`."""

    def __init__(self, cfg: EvalConfig, *, shard: Shard | None = None, model=None, reward=None,
                 judges: list[Judge] | None = None, progress: bool = True, text_reward=None,
                 folder: OwnedFolder | None = None):
        self.cfg = cfg
        self.shard = shard or Shard.from_env()
        self.out = Path(cfg.out)
        self.folder = folder or OwnedFolder(self.out, kind="eval", command="entrgi eval")
        self.progress = progress
        self.device = cfg.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
        self.model, self.reward = (model, reward) if model is not None else self._load_pair()
        self.judges = judges if judges is not None else [load_judge(j, device=self.device) for j in cfg.judges]
        if text_reward is None and cfg.text_reward is not None:
            from ..reward.registry import load_reward
            text_reward = load_reward(cfg.text_reward, device=self.device, template=cfg.reward_template)
        self.text_reward = text_reward  # picks best_of_n's Top@1 and weighs the particles (TEXT_SELECTED)
        spec = cfg.particle_config(cfg.methods[0]).potential_reward
        if spec is not None and any(split_method(m)[0] in PARTICLE_METHODS for m in cfg.methods):
            from ..reward.registry import load_reward
            self.potential_reward = load_reward(spec, device=self.device, template=cfg.reward_template)
        else:
            self.potential_reward = text_reward

    def _load_pair(self):
        """The pair by the rule of :func:`entrgi.pair.load_pair` (a model without a reward only when every
        method is none); a text reward only for methods that never differentiate it."""
        from ..pair import check_differentiable, load_pair

        cfg = self.cfg
        model, reward = load_pair(cfg.model, cfg.reward, methods=[cfg.guidance_config(m).method for m in cfg.methods],
                                  family=cfg.family, dtype=cfg.dtype, device=self.device,
                                  reward_template=cfg.reward_template, flags=("model", "reward"))
        needs = [m for m in cfg.methods if cfg.guidance_config(m).guided and split_method(m)[0] != "particles"]
        if needs or cfg.track_reward:
            what = f"methods {needs}" if needs else "`track_reward` (set it to false)"
            check_differentiable(reward, cfg.reward, what)
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
        """Run (or resume) the grid. Reads and checks come first; then the results file's lock is taken before
        anything else in the folder; files of the folder that the manifest does not prove ours are never replaced or
        appended to, and records of another configuration in the folder are refused (nothing is written)."""
        cfg = self.cfg
        raw = cfg.sampler_config(cfg.temperatures[0], cfg.seeds[0]).match_released  # released code: raw prompts
        sets = {ps: load_prompt_set(ps, raw=raw) for ps in cfg.prompt_sets}
        self.set_names = {ps: sets[ps].name for ps in cfg.prompt_sets}
        path = self.shard.results_file(self.out)
        ours = [path.name, "run.json", *(["matched_n.json"] if MATCHED_BON in cfg.methods else [])]
        self.folder.check_kind()
        self.out.mkdir(parents=True, exist_ok=True)
        with results_lock(path, reentrant=True):  # first: a running owner's files are never judged half-written
            self.folder.refuse_foreign(ours)
            identity = check_run_dir(cfg, self.out, self.folder)
            self.check_records(identity)
            self._run(identity, sets, self.folder.appender(path.name))
        return self.out

    def check_records(self, identity: str) -> None:
        """``ValueError`` when the folder holds records computed under another run identity (or without one): a
        resumed run would mix them into one report."""
        res = load_results(self.out)
        groups = configurations(res.records)
        other = next((k for k in groups if k != identity), False)
        if other is False:
            return
        i = groups[other][0]
        where = f"{res.sources[i][0]} line {res.sources[i][1]}"
        mine = next((r.get("config") for r in res.records if r.get("run") == identity), None) or self.cfg.identity()
        detail = config_difference(res.records[i].get("config"), mine)
        raise ValueError(f"run folder {str(self.out)!r} holds {len(groups[other])} record(s) of another configuration "
                         f"(first at {where}: {detail}); resuming would mix them with this run's. Use a new `out` "
                         "folder, or move those results files away.")

    def cell_config(self, cell: Cell, output: GenerationOutput) -> dict[str, Any]:
        """The cell's resolved configuration, as its records store it: the sampler / guidance settings generation
        ran with (and the particle settings of a particle method), plus the run identity's other fields."""
        config = {k: v for k, v in self.cfg.identity().items() if k not in GRID_SET}
        config["sampler"] = dataclasses.asdict(output.sampler)
        config["guidance"] = dataclasses.asdict(output.guidance)
        particle = split_method(cell.method)[0] in PARTICLE_METHODS
        config["particles"] = dataclasses.asdict(self.cfg.particle_config(cell.method)) if particle else None
        return json.loads(json.dumps(config, default=list))

    def _run(self, identity: str, sets: dict, results) -> None:
        cfg = self.cfg
        done = {r["key"] for r in read_records(self.out)}
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
                    results.append(json.dumps(rec))
                    done.add(rec["key"])
                bar.update(len(batch))
        bar.close()

    def num_samples(self, cell: Cell) -> int:
        """K for plain cells; for compute-matched Best-of-N, N = K × (guided FLOPs / BoN FLOPs)."""
        k = self.cfg.sampler_config(cell.temperature, cell.seed).num_samples
        base, n = split_method(cell.method)
        if n is not None:
            return n
        if base != MATCHED_BON:
            return k
        if self.cfg.matched_bon_n is not None:
            return self.cfg.matched_bon_n
        if self.shard.world > 1:
            raise ValueError("`matched_bon_n` must be set for sharded runs (each worker sees only its own "
                             "prompts' costs when it gets there).")
        # Fixed once per (prompt set, τ) and stored, so that every seed and every resume uses the same N.
        fixed = read_matched_n(self.folder)
        key = f"{self.set_names[cell.prompt_set]}|{cell.temperature}"
        if key not in fixed:
            fixed[key] = matched_n(read_records(self.out), self.set_names[cell.prompt_set], cell.temperature, k)
            self.folder.write_text("matched_n.json", json.dumps(fixed, indent=1))
        return fixed[key]

    # ---- one batch of prompts -------------------------------------------------------------------
    def generate(self, cell: Cell, prompts: list[Prompt], k: int) -> GenerationOutput:
        cfg = self.cfg
        sampler = cfg.sampler_config(cell.temperature, cell.seed, num_samples=k, method=cell.method)
        texts = [p.text for p in prompts]
        if split_method(cell.method)[0] in PARTICLE_METHODS:
            from ..sampling.particles import generate_particles, is_differentiable
            return generate_particles(self.model, texts, self.reward, sampler=sampler,
                                      guidance=cfg.guidance_config(cell.method),
                                      particles=cfg.particle_config(cell.method), progress=False,
                                      track_reward=cfg.track_reward and is_differentiable(self.reward),
                                      potential_reward=self.potential_reward)
        from ..sampling.sampler import generate
        return generate(self.model, texts, self.reward, sampler=sampler, guidance=cfg.guidance_config(cell.method),
                        progress=False, track_reward=cfg.track_reward and self.reward is not None)

    def selection_scores(self, cell: Cell, prompt: str, texts: list[str]) -> list[float] | None:
        """The text reward's scores of a prompt's samples when it picks this cell's Top@1 (``text_reward`` set and
        a method of ``TEXT_SELECTED``), else None (the reward's own scores pick)."""
        if self.text_reward is None or split_method(cell.method)[0] not in TEXT_SELECTED:
            return None
        from ..errors import check_rewards
        scores = self.text_reward.score_texts([prompt] * len(texts), texts)
        scores = scores if torch.is_tensor(scores) else torch.as_tensor(list(scores), dtype=torch.float64)
        check_rewards(scores, "the text reward's scores of the decoded samples", cell.method)
        return [float(v) for v in scores.tolist()]

    def evaluate(self, cell: Cell, prompts: list[Prompt], k: int, identity: str) -> list[dict[str, Any]]:
        out = self.generate(cell, prompts, k)
        n = len(prompts)
        stats = out.stats
        records = []
        for i, p in enumerate(prompts):
            group = out.samples[i]
            texts = [s.text for s in group]
            rewards = [s.reward for s in group]
            scored = self.reward is not None  # else (method none without a reward) no reward, sample 0 as "best"
            selection = self.selection_scores(cell, p.text, texts)  # a text reward's pick, or None
            picked_by = selection if selection is not None else (rewards if scored else None)
            best = max(range(len(group)), key=lambda j: picked_by[j]) if picked_by is not None else 0
            samples = [{"text": s.text, "reward": s.reward} for s in group]
            if selection is not None:
                for s, v in zip(samples, selection):
                    s["selection"] = v
            judges = {}
            for judge in self.judges:
                idx = list(range(len(group))) if judge.on == "all" else [best]
                scores = run_judge(judge, [p.text] * len(idx), [texts[j] for j in idx])
                for j, sc in zip(idx, scores):
                    samples[j].setdefault("judges", {})[judge.name] = sc
                judges[judge.name] = {"top1": scores[idx.index(best)],
                                      "avg": avg(scores) if judge.on == "all" else None}
            name = self.set_names[cell.prompt_set]
            rec = {
                "key": record_key(identity, name, cell, p, k), "prompt_set": name, "prompt_id": p.id,
                "prompt": p.text, "method": cell.method, "temperature": cell.temperature, "seed": cell.seed,
                "num_samples": k,
                "top1": (rewards[best] if selection is not None else top1(rewards)) if scored else None,
                "avg": avg(rewards) if scored else None, "best_index": best,
                "match_released": out.sampler.match_released,
                "judges": judges, "distinct": {str(m): distinct_n(texts, m) for m in self.cfg.distinct_n},
                "samples": samples, "curves": curves(group),
                "compute": per_prompt(stats, n),
                "rank": self.shard.rank,
                "run": identity, "config": self.cell_config(cell, out),
            }
            if selection is not None:
                rec["selection"] = {"reward": self.cfg.text_reward or getattr(self.text_reward, "name", "text_reward"),
                                    "top1": selection[best], "avg": avg(selection)}
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


def per_prompt(stats, n: int) -> dict[str, Any]:
    """Every numeric field of a :class:`~entrgi.sampling.outputs.ComputeStats` divided by the batch's prompt count."""
    return {k: v / n if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in dataclasses.asdict(stats).items()}


def matched_n(records: list[dict[str, Any]], set_name: str, temperature: float, k: int) -> int:
    """N such that Best-of-N costs as much as the costliest guided method in the same (prompt set, τ):
    max(K, round(K × c_guided / c_BoN)), c = mean estimated FLOPs per prompt (``compute.flops``) of the
    records so far. Deterministic: wall time plays no part."""
    def mean_flops(method):
        rs = [r for r in records if r["method"] == method and r["prompt_set"] == set_name
              and r["temperature"] == temperature]
        if not rs:
            return None
        fs = [r.get("compute", {}).get("flops") for r in rs]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in fs):
            raise ValueError(f"best_of_n_matched: the `{method}` records of {set_name!r} at τ={temperature} have no "
                             "finite `compute.flops` (written before cost estimates were recorded); set "
                             "`matched_bon_n`, or run into a new `out` directory.")
        return math.fsum(fs) / len(fs)
    c_bon = mean_flops("best_of_n")
    if c_bon is None:
        c_bon = mean_flops("none")  # unguided sampling costs the same
    guided = [c for c in (mean_flops(m) for m in (*guided_methods(), APS_ANCHORED, *PARTICLE_METHODS)) if c is not None]
    if c_bon is None or not guided:
        raise ValueError("best_of_n_matched needs `best_of_n` (or `none`) and a guided method in the same run "
                         "(or set `matched_bon_n`).")
    if c_bon <= 0:
        raise ValueError(f"best_of_n_matched: Best-of-N's `compute.flops` is {c_bon}, not positive; set "
                         "`matched_bon_n`.")
    return max(k, round(k * max(guided) / c_bon))


def run_eval(cfg: EvalConfig, **kwargs) -> Path:
    """Run (or resume) an evaluation; returns the run directory."""
    return EvalRunner(cfg, **kwargs).run()
