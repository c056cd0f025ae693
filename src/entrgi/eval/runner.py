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

from ..errors import check_rewards
from ..files import OwnedFolder
from ..pair import check_differentiable, load_pair
from ..reward.registry import load_reward
from ..sampling.outputs import GenerationOutput
from ..sampling.particles import is_differentiable
from ..sampling.sampler import generate
from ..settings import RunSettings, model_defaults
from .config import GRID_SET, MATCHED_BON, EvalConfig, describe_difference, settings_key
from .judges import Judge, load_judge, run_judge
from .metrics import avg, distinct_n, pseudo_perplexity, top1
from .prompts import Prompt, load_prompt_set
from .records import config_difference, configurations, load_results, read_records, results_lock
from .tables import cell_label


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


def record_key(identity: str, set_name: str, cell: Cell, prompt: Prompt, num_samples: int,
               settings: str = "") -> str:
    """The key of one prompt's record in one cell: the run identity, the cell, the prompt, N and the cell's resolved
    settings (their hash: :func:`~entrgi.eval.config.settings_key`)."""
    blob = json.dumps([identity, set_name, cell.method, cell.temperature, cell.seed, prompt.id, prompt.text,
                       num_samples, settings])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def check_run_dir(cfg: EvalConfig, out: Path, model_layer: dict[str, Any] | None = None,
                  folder: OwnedFolder | None = None) -> str:
    """Create ``run.json`` (through ``folder``, which records it in its manifest) or refuse to mix results of a
    different identity into ``out``; returns the folder's identity hash (the one its records are keyed with).
    Identities compare on resolved values (every default filled in, ``model_layer`` the loaded model's defaults)."""
    out.mkdir(parents=True, exist_ok=True)
    folder = folder or OwnedFolder(out, kind="eval", command="entrgi eval")
    meta = out / "run.json"
    new = json.loads(json.dumps(cfg.identity(model_layer), default=list))
    if meta.exists():
        try:
            stored = json.loads(meta.read_text())
            old_hash, old = stored["identity_hash"], stored["identity"]
            if not isinstance(old, dict) or not isinstance(old_hash, str):
                raise TypeError("`identity` must be a mapping and `identity_hash` a string")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{str(meta)!r} is unreadable ({e}); use a new `out` directory.") from e
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            detail = "; ".join(describe_difference(k, new.get(k), old.get(k)) for k in diff)
            raise ValueError(f"run directory {str(out)!r} holds results of a different configuration (differs in "
                             f"{diff}): {detail}. Use a new `out` directory or restore those settings.")
        return old_hash
    text = json.dumps({"identity": new, "identity_hash": cfg.identity_hash(model_layer), "config": cfg.to_dict(),
                       "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1, default=list)
    folder.write_text("run.json", text)  # atomic: data-parallel workers may race here
    return cfg.identity_hash(model_layer)


def run_files(cfg: EvalConfig, shard: Shard) -> list[str]:
    """The files an eval run writes into its folder: its results file, ``run.json`` and, with a compute-matched
    method, ``matched_n.json``."""
    return [shard.results_file(Path(cfg.out)).name, "run.json",
            *(["matched_n.json"] if any(e.matched for e in cfg.entries) else [])]


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
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.device = cfg.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
        self.model, self.reward = (model, reward) if model is not None else self._load_pair()
        self.model_layer = model_defaults(self.model)  # the loaded model's defaults: one resolution
        self.judges = judges if judges is not None else [load_judge(j, device=self.device) for j in cfg.judges]
        if text_reward is None and cfg.text_reward is not None:
            text_reward = load_reward(cfg.text_reward, device=self.device, template=cfg.reward_template)
        self.text_reward = text_reward  # picks the Best-of-N methods' Top@1 and weighs the particles
        self.potentials: dict[str, object] = {}

    def _load_pair(self):
        """The pair by the rule of :func:`entrgi.pair.load_pair` (a model without a reward only when every
        method is none); a text reward only for methods that never differentiate it."""
        cfg = self.cfg
        entries = cfg.entries
        model, reward = load_pair(cfg.model, cfg.reward, methods=[cfg.method_of(e) for e in entries],
                                  family=cfg.family, dtype=cfg.dtype, device=self.device,
                                  reward_template=cfg.reward_template, flags=("model", "reward"))
        first = (cfg.temperatures[0], cfg.seeds[0])
        layer = model_defaults(model)
        needs = [e.name for e in entries if cfg.settings(e, *first, model_layer=layer).guidance.guided]
        if needs or cfg.track_reward:
            what = f"methods {needs}" if needs else "`track_reward` (set it to false)"
            check_differentiable(reward, cfg.reward, what)
        return model, reward

    # ---- the grid -------------------------------------------------------------------------------
    def cells(self) -> Iterator[Cell]:
        """Every method but the compute-matched Best-of-N first (seed-major), then those (they need the others'
        costs)."""
        cfg = self.cfg
        entries = cfg.entries
        for group in ([e for e in entries if not e.matched], [e for e in entries if e.matched]):
            for ps in cfg.prompt_sets:
                for seed in cfg.seeds:
                    for t in cfg.temperatures:
                        for e in group:
                            yield Cell(ps, e.name, t, seed)

    def run(self) -> Path:
        """Run (or resume) the grid. Reads and checks come first; then the results file's lock is taken before
        anything else in the folder; files of the folder that the manifest does not prove ours are never replaced or
        appended to, and records of another configuration in the folder are refused (nothing is written)."""
        cfg = self.cfg
        raw = self.settings(cfg.entries[0].name, cfg.temperatures[0], cfg.seeds[0]).sampler.match_released
        sets = {ps: load_prompt_set(ps, raw=raw) for ps in cfg.prompt_sets}  # released code: raw prompts
        self.set_names = {ps: sets[ps].name for ps in cfg.prompt_sets}
        path = self.shard.results_file(self.out)
        self.folder.check_kind()
        self.out.mkdir(parents=True, exist_ok=True)
        with results_lock(path, reentrant=True):  # first: a running owner's files are never judged half-written
            self.folder.refuse_foreign(run_files(cfg, self.shard))
            identity = check_run_dir(cfg, self.out, self.model_layer, self.folder)
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
        mine = next((r.get("config") for r in res.records if r.get("run") == identity), None) or self.cfg.identity(self.model_layer)
        detail = config_difference(res.records[i].get("config"), mine)
        raise ValueError(f"run folder {str(self.out)!r} holds {len(groups[other])} record(s) of another configuration "
                         f"(first at {where}: {detail}); resuming would mix them with this run's. Use a new `out` "
                         "folder, or move those results files away.")

    def cell_config(self, settings: RunSettings) -> dict[str, Any]:
        """The cell's resolved configuration, as its records store it: the settings generation ran with (sampler,
        guidance, search, preset), plus the run identity's other fields (models, judges, prompt sets, ...)."""
        config = {k: v for k, v in self.cfg.identity(self.model_layer).items() if k not in (*GRID_SET, "methods")}
        config.update(settings.to_dict())
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
            settings = self.settings(cell.method, cell.temperature, cell.seed, self.num_samples(cell))
            key = settings_key(settings)
            k = settings.sampler.num_samples
            todo = [p for p in prompts
                    if record_key(identity, self.set_names[cell.prompt_set], cell, p, k, key) not in done]
            bar.update(len(prompts) - len(todo))
            bar.set_postfix_str(f"{cell.prompt_set} {cell.method} τ={cell.temperature} seed={cell.seed}")
            for lo in range(0, len(todo), cfg.prompts_per_batch):
                batch = todo[lo:lo + cfg.prompts_per_batch]
                for rec in self.evaluate(cell, settings, batch, identity):
                    results.append(json.dumps(rec))
                    done.add(rec["key"])
                bar.update(len(batch))
        bar.close()

    def num_samples(self, cell: Cell) -> int | None:
        """N of a compute-matched Best-of-N cell: K × (the matched methods' FLOPs / plain sampling's), fixed once per
        (prompt set, τ) and stored; None for the other cells (their settings say)."""
        cfg = self.cfg
        entry = cfg.entry(cell.method)
        if not entry.matched:
            return None
        if entry.n is not None:
            return entry.n
        if cfg.matched_bon_n is not None:
            return cfg.matched_bon_n
        if self.shard.world > 1:
            raise ValueError("`matched_bon_n` must be set for sharded runs (each worker sees only its own "
                             "prompts' costs when it gets there).")
        # Fixed once per (prompt set, τ, method) and stored, so that every seed and every resume uses the same N.
        fixed = read_matched_n(self.folder)
        key = f"{self.set_names[cell.prompt_set]}|{cell.temperature}|{cell.method}"
        if key not in fixed:
            k = self.settings(entry.name, cell.temperature, cell.seed).sampler.num_samples
            fixed[key] = matched_n(read_records(self.out), self.set_names[cell.prompt_set], cell.temperature, k,
                                   entry.match)
            self.folder.write_text("matched_n.json", json.dumps(fixed, indent=1))
        return fixed[key]

    def settings(self, method: str, temperature: float, seed: int, num_samples: int | None = None) -> RunSettings:
        """A cell's settings, resolved with the loaded model's defaults."""
        return self.cfg.settings(method, temperature, seed, num_samples, model_layer=self.model_layer)

    # ---- one batch of prompts -------------------------------------------------------------------
    def potential(self, settings: RunSettings):
        """The particles' potential reward: the search's spelling (loaded once), else the run's text reward."""
        spec = settings.search.potential_reward
        if spec is None:
            return self.text_reward
        if spec not in self.potentials:
            self.potentials[spec] = load_reward(spec, device=self.device, template=self.cfg.reward_template)
        return self.potentials[spec]

    def generate(self, settings: RunSettings, prompts: list[Prompt]) -> GenerationOutput:
        """The cell's samples: :func:`entrgi.generate` with its resolved settings (particles weighed by the potential
        reward when one is given)."""
        potential = self.potential(settings) if settings.search.strategy == "particles" else None
        return generate(self.model, [p.text for p in prompts], self.reward, sampler=settings.sampler,
                        guidance=settings.guidance, search=settings.search, potential_reward=potential, progress=False,
                        track_reward=self.cfg.track_reward and is_differentiable(self.reward))

    def selection_scores(self, settings: RunSettings, prompt: str, texts: list[str]) -> list[float] | None:
        """The text reward's scores of a prompt's samples when it picks this cell's Top@1 (``text_reward`` set and a
        ranking search: Best-of-N, particles), else None (the reward's own scores pick)."""
        if self.text_reward is None or settings.search.strategy == "sample":
            return None
        scores = self.text_reward.score_texts([prompt] * len(texts), texts)
        scores = scores if torch.is_tensor(scores) else torch.as_tensor(list(scores), dtype=torch.float64)
        check_rewards(scores, "the text reward's scores of the decoded samples", settings.guidance.rule)
        return [float(v) for v in scores.tolist()]

    def evaluate(self, cell: Cell, settings: RunSettings, prompts: list[Prompt],
                 identity: str) -> list[dict[str, Any]]:
        out = self.generate(settings, prompts)
        entry = self.cfg.entry(cell.method)
        n, k, key = len(prompts), settings.sampler.num_samples, settings_key(settings)
        stats = out.stats
        records = []
        for i, p in enumerate(prompts):
            group = out.samples[i]
            texts = [s.text for s in group]
            rewards = [s.reward for s in group]
            scored = group[0].reward is not None  # else (rule none without a reward) no reward, sample 0 as "best"
            selection = self.selection_scores(settings, p.text, texts)  # a text reward's pick, or None
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
                "key": record_key(identity, name, cell, p, k, key), "prompt_set": name, "prompt_id": p.id,
                "prompt": p.text, "method": cell.method, "label": cell_label(cell.method, entry.label, None if
                                                                             entry.preset else settings.preset),
                "temperature": cell.temperature, "seed": cell.seed, "num_samples": k, "matched": entry.matched,
                "top1": (rewards[best] if selection is not None else top1(rewards)) if scored else None,
                "avg": avg(rewards) if scored else None, "best_index": best,
                "match_released": settings.sampler.match_released,
                "judges": judges, "distinct": {str(m): distinct_n(texts, m) for m in self.cfg.distinct_n},
                "samples": samples, "curves": curves(group),
                "compute": per_prompt(stats, n), "observer_compute": per_prompt(out.observer_stats, n),
                "settings": settings.to_dict(), "rank": self.shard.rank,
                "run": identity, "config": self.cell_config(settings),
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


def is_plain(record: dict[str, Any]) -> bool:
    """True for a record of unguided sampling (plain, or Best-of-N not matched): Best-of-N's cost per sample."""
    s = record.get("settings")
    if isinstance(s, dict):
        return (s["guidance"]["rule"] == "none" and s["search"]["strategy"] in ("sample", "best_of_n")
                and not record.get("matched"))
    return record["method"] in ("none", "best_of_n")


def is_guided(record: dict[str, Any]) -> bool:
    """True for a record of a guided method (or particles), the candidates a matched Best-of-N matches."""
    s = record.get("settings")
    if isinstance(s, dict):
        return s["guidance"]["rule"] != "none" or s["search"]["strategy"] == "particles"
    return record["method"] not in ("none", "best_of_n", MATCHED_BON)


def matched_n(records: list[dict[str, Any]], set_name: str, temperature: float, k: int,
              match: tuple[str, ...] = ()) -> int:
    """N such that Best-of-N costs as much as the methods ``match`` (default: the costliest guided method) in the same
    (prompt set, τ): max(K, round(K × c_target / c_BoN)), c = mean estimated FLOPs per prompt (``compute.flops``: the
    method's own cost) of the records so far, c_BoN from the plain (unguided) records with K samples. Deterministic:
    wall time plays no part."""
    here = [r for r in records if r["prompt_set"] == set_name and r["temperature"] == temperature]

    def mean_flops(rs, what):
        fs = [r.get("compute", {}).get("flops") for r in rs]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in fs):
            raise ValueError(f"best_of_n_matched: the {what} records of {set_name!r} at τ={temperature} have no "
                             "finite `compute.flops`; set `matched_bon_n`, or run into a new `out` directory.")
        return math.fsum(fs) / len(fs)

    plain = [r for r in here if is_plain(r) and r.get("num_samples", k) == k]
    if match:
        targets = {m: [r for r in here if r["method"] == m] for m in match}
    else:
        guided = [r for r in here if is_guided(r)]
        targets = {m: [r for r in guided if r["method"] == m] for m in dict.fromkeys(r["method"] for r in guided)}
    targets = {m: rs for m, rs in targets.items() if rs}
    if not plain or not targets:
        raise ValueError("best_of_n_matched needs plain sampling (`none` or `best_of_n`) and the method(s) it matches "
                         "in the same run (or set `matched_bon_n`).")
    c_bon = mean_flops(plain, "plain sampling's")
    if c_bon <= 0:
        raise ValueError(f"best_of_n_matched: plain sampling's `compute.flops` is {c_bon}, not positive; set "
                         "`matched_bon_n`.")
    return max(k, round(k * max(mean_flops(rs, f"`{m}`") for m, rs in targets.items()) / c_bon))


def run_eval(cfg: EvalConfig, **kwargs) -> Path:
    """Run (or resume) an evaluation; returns the run directory."""
    return EvalRunner(cfg, **kwargs).run()
