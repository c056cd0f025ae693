"""Token-exact agreement of entrgi's reproduction modes with the reference samplers (docs/differences.md).

    python scripts/reproduce_reference.py --released CHECKOUT --dream FOLDER --llada CHECKOUT
    python scripts/reproduce_reference.py ... --ablations            # also: each choice put back alone
    python scripts/reproduce_reference.py ... --write tests/fixtures/reproduction/golden.json
    python scripts/reproduce_reference.py --default-records tests/fixtures/reproduction/default_path.json

``--released``: a checkout of the authors' code, https://github.com/atutej/entrgi (``main_expts/entrgi.py`` and
``main_expts/utils.py``; the docs cite commit 2e60bdf). ``--dream``: a folder holding Dream's
``generation_utils.py`` (the model repository ``Dream-org/Dream-v0-Instruct-7B``, or the copy ZHZisZZ/dllm vendors
under ``dllm/pipelines/dream/models/``). ``--llada``: a checkout of https://github.com/ML-GSAI/LLaDA
(``generate.py``). Nothing of them is copied: they are imported from where they are and run on the tiny
checkpoints of ``tests/support/reproduction_cases.py`` (the real Qwen vocabulary; LLaDA-8B's layout), with three
substitutions that do not touch their logic: the DLLM forward is entrgi's (the same weights; no remote code runs
on transformers 5), ``torch.multinomial`` (``torch.rand_like`` for LLaDA's Gumbel noise) returns the inverse-CDF
draw at the uniforms entrgi's per-row streams give the same slot (``entrgi.ops.released.inverse_cdf_probs``), and
the hub loaders return the tiny models. Each case runs the reference and entrgi (``match_released`` /
``match_reference``) and prints, per case: the rows (of K = 4) whose L = 16 tokens agree with entrgi as shipped
before the reproduction choices (``before``) and with them (``after``), the rows whose per-step commits agree,
and the largest reward differences. ``--write`` stores the references' records (tokens, per-step commits,
rewards) with the checkouts' commits for ``tests/test_reproduction.py``. ``--default-records`` needs no
reference: it stores what entrgi's default path (no switch) gives on the cases; run it on the commit before a
change to pin that path. Threads: 1 (``--threads``), as the tests (rewards round differently with 2).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test support: the golden cases' tiny models
from support import reproduction_cases as rc  # noqa: E402
from support.reproduction_cases import compare, run_entrgi  # noqa: E402

from entrgi import SamplerConfig  # noqa: E402
from entrgi.ops.rng import RowStreams  # noqa: E402
from entrgi.sampling.sampler import DiffusionSampler  # noqa: E402


# ---- loading the references from the user's checkouts ---------------------------------------------------------
def load_module(name: str, path: Path):
    """Import ``path`` as module ``name`` (registered in ``sys.modules``, as the file's own imports expect)."""
    if not path.is_file():
        raise SystemExit(f"reproduce_reference.py: error: {path} not found")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def provenance(files: list[Path]) -> dict:
    """Where ``files`` come from: the git repository, commit and path of each (when in a git checkout) and their
    sha256."""
    out = {"files": {}}
    for f in files:
        entry = {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        git = ["git", "-C", str(f.parent)]
        try:
            top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
            remote = subprocess.run([*git, "remote", "get-url", "origin"], capture_output=True, text=True)
            entry["path"] = str(f.resolve().relative_to(Path(top.stdout.strip()).resolve()))
            out.update(commit=commit.stdout.strip(), repository=remote.stdout.strip() or None)
        except (subprocess.CalledProcessError, FileNotFoundError, ValueError):
            entry["path"] = f.name
        out["files"][entry.pop("path")] = entry
    return out


@contextlib.contextmanager
def patched(obj, **attrs):
    """Set attributes of ``obj`` for the duration of the block."""
    saved = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


def full_logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unshifted logits (B, N, V) of every position from entrgi's module of ``model`` (positions 0 … N − 1)."""
    return model.module.lm_head(model.module.hidden_states(ids, attention_mask, None))


class StreamDraws:
    """``torch.multinomial`` for the references: row ``p``'s draws are the inverse CDF at uniforms of stream ``p``,
    as entrgi's sampler draws them (the rows come from :meth:`plan` or :meth:`load`)."""

    def __init__(self, streams: RowStreams):
        self.streams = streams
        self.queue: list[int] = []
        self.counts: list[int] = []
        self.loaded: torch.Tensor | None = None

    def plan(self, counts: list[int], repeats: int) -> None:
        """The released code's order at a step: ``repeats`` inner passes then the commit, each over the rows with
        masked slots, one call per row with ``counts[p]`` slots."""
        if self.queue:
            raise RuntimeError(f"draws planned for rows {self.queue} were not made: the harness is out of step")
        rows = [p for p, n in enumerate(counts) if n]
        self.queue, self.counts = rows * repeats + rows, counts

    def load(self, uniforms: torch.Tensor) -> None:
        """Dream: the uniforms of every masked slot of the batch (row-major) for the step's one call."""
        self.loaded = uniforms

    def __call__(self, probs, num_samples, replacement=False, *, generator=None, out=None):
        from entrgi.ops.released import inverse_cdf_probs

        if num_samples != 1 or probs.dim() != 2:
            raise RuntimeError("the references draw one sample per row of a 2-D probability tensor")
        if self.loaded is not None:
            u, self.loaded = self.loaded, None
        else:
            p = self.queue.pop(0)
            if probs.shape[0] != self.counts[p]:
                raise RuntimeError(f"row {p}: {probs.shape[0]} draws, {self.counts[p]} masked slots")
            u = torch.rand(self.counts[p], generator=self.streams.generators[p], dtype=torch.float64,
                           device=self.streams.device)
        if u.numel() != probs.shape[0]:
            raise RuntimeError(f"{probs.shape[0]} draws, {u.numel()} uniforms")
        return inverse_cdf_probs(probs, u).unsqueeze(-1)


class Hub:
    """Stands in for ``AutoModel`` / ``AutoTokenizer`` / ...: ``from_pretrained(name)`` returns the object given
    for ``name``."""

    def __init__(self, objects: dict):
        self.objects = objects

    def from_pretrained(self, name, *args, **kwargs):
        return self.objects[name]


class ReleasedDream(torch.nn.Module):
    """The released code's ``dream_model``: logits of every position (it shifts them itself), the 4-D mask read as
    key padding; keeps the canvas of each call (the last one is the final canvas, written in place)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.lm_head = model.module.lm_head
        self.snapshots: list[torch.Tensor] = []
        self.canvas: torch.Tensor | None = None

    def forward(self, ids, attention_mask=None):
        if attention_mask is not None and not bool((attention_mask == 0).all()):
            raise RuntimeError("the golden cases have one prompt (no padding)")
        self.snapshots.append(ids.clone())
        self.canvas = ids
        return SimpleNamespace(logits=full_logits(self.model, ids))


def row_streams(model, reward, case: dict) -> RowStreams:
    """The per-row streams entrgi's sampler gives the case's rows (seeded from seed, prompt ids, sample index)."""
    rows = DiffusionSampler(model, reward).rows_for(case["prompt"], SamplerConfig(**case["sampler"]))
    return RowStreams([r.seed for r in rows])


def commits_of(snapshots: list[torch.Tensor], final: torch.Tensor, P: int, mask_id: int) -> list[list[list[int]]]:
    """Per row, per step: the response slots that step committed (masked before, not after)."""
    states = [s[:, P:] for s in snapshots] + [final[:, P:]]
    return [[((a[b] == mask_id) & (c[b] != mask_id)).nonzero().flatten().tolist() for a, c in zip(states, states[1:])]
            for b in range(final.shape[0])]


def run_released(mods, case: dict, model, reward, phi_out: list | None = None) -> dict:
    """The released ``main_expts/entrgi.py`` ``generate`` on one case (rule none = its M = 0); ``phi_out``
    receives the optimised logits φ (n, V) of each step."""
    utils, rel = mods
    s, g = case["sampler"], case["guidance"]
    guided = g["rule"] != "none"
    cfg = utils.Config(dream_model="tiny-dream", reward_model="tiny-reward", K=s["num_samples"], T=s["steps"],
                       M=g.get("inner_steps", 3) if guided else 0, eta=g.get("lr", 0.5),
                       max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"], top_k=None,
                       alg=s.get("remasking", "entropy"), alg_temp=None,
                       deprioritize_eos=s.get("deprioritize_eos", True),
                       device="cpu", seed=s["seed"], use_entrgi=g["rule"] == "entrgi", use_aps=g["rule"] == "aps")
    dream = ReleasedDream(model)
    hubs = dict(AutoModel=Hub({cfg.dream_model: dream}),
                AutoTokenizer=Hub({cfg.dream_model: model.tokenizer, cfg.reward_model: reward.tokenizer}),
                AutoModelForSequenceClassification=Hub({cfg.reward_model: reward.model}))
    with patched(utils, **hubs), contextlib.redirect_stdout(sys.stderr):
        dream_model, dtok, rm, rtok, token_mapping, mapped_embeds = utils.load_models(cfg)
    draws = StreamDraws(row_streams(model, reward, case))
    inner: list[list[torch.Tensor]] = []
    original = rel.optimize_logits

    def optimize_logits(base_logits, mask_indices, *args):
        draws.plan([int(m.sum()) for m in mask_indices], cfg.M if (cfg.use_entrgi or cfg.use_aps) else 0)
        inner.append([])
        result = original(base_logits, mask_indices, *args)
        if phi_out is not None:
            phi_out.append(result[0])
        return result

    def record(module, args, kwargs, output):
        if kwargs.get("inputs_embeds") is not None:
            inner[-1].append(output.logits[:, 0].detach().float().clone())

    hook = reward.model.register_forward_hook(record, with_kwargs=True)
    try:
        with patched(rel, optimize_logits=optimize_logits), patched(torch, multinomial=draws):
            torch.manual_seed(cfg.seed)  # as its main(); no draw reaches torch's generator
            results = rel.generate(dream_model, dtok, rm, rtok, token_mapping, mapped_embeds, [case["prompt"]], cfg,
                                   utils.get_model_config(cfg.dream_model, dtok))
    finally:
        hook.remove()
    P = dream.snapshots[0].shape[1] - s["max_new_tokens"]
    final = dream.canvas
    out = dict(tokens=final[:, P:].tolist(), commits=commits_of(dream.snapshots, final, P, model.mask_token_id),
               rewards=[float(r) for r in results[0]["all_rewards"]])
    if guided:  # per row, per step: the M inner-loop rewards
        out["step_rewards"] = [[[float(r[b]) for r in step] for step in inner] for b in range(final.shape[0])]
    return out


def run_dream(gu, case: dict, model, reward) -> dict:
    """Dream's ``diffusion_generate`` (its ``DreamGenerationMixin``) on one case, the K rows as one batch."""
    s = case["sampler"]

    class Reference(gu.DreamGenerationMixin):
        def __init__(self):
            self.generation_config = config
            self.snapshots: list[torch.Tensor] = []

        @property
        def device(self):
            return model.device

        def __call__(self, x, attention_mask=None, tok_idx=None):
            if not (isinstance(attention_mask, str) and tok_idx is None):
                raise RuntimeError("the golden cases have one prompt (no padding)")
            return SimpleNamespace(logits=full_logits(model, x))

    config = gu.DreamGenerationConfig(
        temperature=s["temperature"], top_p=s["top_p"], top_k=None, max_new_tokens=s["max_new_tokens"],
        steps=s["steps"], eps=s.get("eps", 1e-3), alg=s["remasking"], alg_temp=None,
        mask_token_id=model.mask_token_id, pad_token_id=model.pad_token_id, bos_token_id=None,
        eos_token_id=model.pad_token_id, return_dict=False, output_history=False)
    ref = Reference()
    draws = StreamDraws(row_streams(model, reward, case))
    ids = torch.tensor([model.encode_prompt(case["prompt"])] * s["num_samples"])
    P = ids.shape[1]

    def logits_hook(step, x, logits):  # the step's uniforms, one per masked slot, before sample_tokens
        cand = x[:, P:] == model.mask_token_id
        draws.load(draws.streams.uniform_at(cand)[cand])
        return logits

    def tokens_hook(step, x, logits):
        ref.snapshots.append(x.clone())
        return x

    with patched(torch, multinomial=draws):
        final = ref.diffusion_generate(ids, generation_config=config, generation_logits_hook_func=logits_hook,
                                       generation_tokens_hook_func=tokens_hook)
    return dict(tokens=final[:, P:].tolist(), commits=commits_of(ref.snapshots[:-1], final, P, model.mask_token_id))


def run_llada(gen, case: dict, model, reward) -> dict:
    """LLaDA's ``generate`` on one case, the K rows as one batch; its Gumbel noise from the rows' streams."""
    s = case["sampler"]
    L, T, bl = s["max_new_tokens"], s["steps"], s["block_length"]
    streams = row_streams(model, reward, case)
    ids = torch.tensor([model.encode_prompt(case["prompt"])] * s["num_samples"])
    P = ids.shape[1]
    snapshots: list[torch.Tensor] = []

    class Reference:
        device = model.device

        def __call__(self, x, attention_mask=None):
            snapshots.append(x.clone())
            return SimpleNamespace(logits=full_logits(model, x))

    def rand_like(t, *, dtype=None, **kw):  # add_gumbel_noise's uniforms: the block's masked slots from the streams
        x = snapshots[-1]
        block = (len(snapshots) - 1) // (T // (L // bl))
        cand = x[:, P:] == model.mask_token_id
        cand[:, :block * bl] = False
        cand[:, (block + 1) * bl:] = False
        u = torch.full(t.shape, 0.5, dtype=dtype or t.dtype, device=t.device)
        u[:, P:][cand] = streams.uniform_matrix_at(cand, t.shape[-1]).to(u.dtype)
        return u

    with patched(torch, rand_like=rand_like):
        final = gen.generate(Reference(), ids, steps=T, gen_length=L, block_length=bl, temperature=s["temperature"],
                             cfg_scale=0.0, remasking="low_confidence", mask_id=model.mask_token_id)
    return dict(tokens=final[:, P:].tolist(), commits=commits_of(snapshots, final, P, model.mask_token_id))


def adam_step_table(mods, case: dict, model, reward) -> str:
    """Issue #25, item 6: the largest |Δφ| between the released code and entrgi after one Adam step of the first
    denoising step (M = 1, T = 1), entrgi as shipped, with every choice, and with each choice put back alone;
    over the ids finite on both sides."""
    from entrgi.reproduction import Reproduction

    one = dict(case, sampler=dict(case["sampler"], steps=1), guidance=dict(case["guidance"], inner_steps=1))
    ref: list = []
    run_released(mods, one, model, reward, phi_out=ref)
    full = Reproduction("released")
    profiles = {"as shipped": None, "every choice": full, **{f"without {n}": full.without(n)
                                                             for n in Reproduction.choices()}}
    lines = [f"{case['name']}: max |Δφ| after one Adam step (released vs entrgi)"]
    for label, profile in profiles.items():
        ours: list = []
        run_entrgi(one, model, reward, profile=profile, guided_out=ours)
        a, b = ref[0].float(), ours[0]
        both = torch.isfinite(a) & torch.isfinite(b)
        lines.append(f"  {label:<28} {float((a - b).abs()[both].max()):.3g}")
    return "\n".join(lines)


def fmt(x) -> str:
    return "—" if x is None else ("0" if x == 0 else f"{x:.1e}")


# ---- main -------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--released", type=Path, help="checkout of atutej/entrgi (main_expts/entrgi.py, utils.py)")
    ap.add_argument("--dream", type=Path, help="folder with Dream's generation_utils.py")
    ap.add_argument("--llada", type=Path, help="checkout of ML-GSAI/LLaDA (generate.py)")
    ap.add_argument("--cases", nargs="+", help="run only these cases (names or prefixes)")
    ap.add_argument("--ablations", action="store_true", help="also run each reproduction choice put back alone")
    ap.add_argument("--write", type=Path, help="store the references' records (the golden file)")
    ap.add_argument("--default-records", type=Path, help="store entrgi's default-path records (no reference needed)")
    ap.add_argument("--adam-step", action="store_true", help="issue item 6: |Δφ| after one Adam step, per choice")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as tests/test_reproduction.py: no reduction split across threads)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c for c in rc.cases() if not args.cases or any(c["name"].startswith(p) for p in args.cases)]
    if not cases:
        ap.error(f"--cases: no case matches {args.cases}")
    reward = rc.reward()
    if args.default_records:
        import entrgi
        records = {c["name"]: run_entrgi(c, rc.model_for(c), reward, profile="default") for c in cases}
        if args.cases and args.default_records.exists():  # update these cases, keep the others
            records = {**json.loads(args.default_records.read_text())["cases"], **records}
            records = {c["name"]: records[c["name"]] for c in rc.cases() if c["name"] in records}
        args.default_records.parent.mkdir(parents=True, exist_ok=True)
        args.default_records.write_text(json.dumps(dict(
            produced_by=dict(script="scripts/reproduce_reference.py --default-records", entrgi=entrgi_commit(),
                             entrgi_imported_from=where(Path(entrgi.__file__).parent), **environment(args.threads)),
            cases=records), indent=1) + "\n")
        print(f"wrote {args.default_records} ({len(records)} cases)")
        return 0
    needed = {c["reference"] for c in cases}
    missing = [f"--{r}" for r in sorted(needed) if getattr(args, r) is None]
    if missing:
        ap.error(f"the cases need {', '.join(missing)} (a checkout of the reference)")
    refs, sources = {}, {}
    if "released" in needed:
        main_expts = args.released / "main_expts"
        utils = load_module("utils", main_expts / "utils.py")  # the name its entrgi.py imports
        refs["released"] = (utils, load_module("released_entrgi", main_expts / "entrgi.py"))
        sources["released"] = provenance([main_expts / "entrgi.py", main_expts / "utils.py"])
    if "dream" in needed:
        refs["dream"] = load_module("dream_generation_utils", args.dream / "generation_utils.py")
        sources["dream"] = provenance([args.dream / "generation_utils.py"])
    if "llada" in needed:
        refs["llada"] = load_module("llada_generate", args.llada / "generate.py")
        sources["llada"] = provenance([args.llada / "generate.py"])
    runners = {"released": run_released, "dream": run_dream, "llada": run_llada}
    from entrgi.reproduction import Reproduction

    if args.adam_step:
        for case in cases:
            if case["reference"] == "released" and case["guidance"]["rule"] != "none":
                print(adam_step_table(refs["released"], case, rc.model_for(case), reward), flush=True)
        return 0
    golden, rows, ablations = [], [], []
    print(f"{'case':<30} {'before':>6} {'after':>6} {'commits':>7} {'max |Δ reward|':>15} {'max |Δ step reward|':>19}"
          f" {'s ref':>6} {'s ours':>6}")
    for case in cases:
        model = rc.model_for(case)
        t0 = time.perf_counter()
        ref = runners[case["reference"]](refs[case["reference"]], case, model, reward)
        t1 = time.perf_counter()
        ours = run_entrgi(case, model, reward)
        t2 = time.perf_counter()
        before = compare(ref, run_entrgi(case, model, reward, profile=None))
        after = compare(ref, ours)
        row = dict(case=case["name"], before=before["rows"], after=after["rows"], commits=after["commits"],
                   n=after["n"], d_reward=after["d_reward"], d_step_reward=after["d_step_reward"],
                   before_d_reward=before["d_reward"], s_ref=round(t1 - t0, 1), s_ours=round(t2 - t1, 1))
        rows.append(row)
        print(f"{case['name']:<30} {before['rows']:>4}/{after['n']} {after['rows']:>4}/{after['n']}"
              f" {after['commits']:>5}/{after['n']} {fmt(after['d_reward']):>15} {fmt(after['d_step_reward']):>19}"
              f" {t1 - t0:>6.1f} {t2 - t1:>6.1f}", flush=True)
        if args.ablations:
            full = Reproduction(case["reference"])
            effect = {}
            for name in Reproduction.choices():
                c = compare(ref, run_entrgi(case, model, reward, profile=full.without(name)))
                effect[name] = dict(rows=c["rows"], d_reward=c["d_reward"], d_step_reward=c["d_step_reward"])
            ablations.append(dict(case=case["name"], n=after["n"], effect=effect))
        golden.append(dict(case, **ref))
    print()
    print(markdown_table(rows))
    if ablations:
        print()
        print(ablation_table(ablations))
    if args.write:
        if args.cases and args.write.exists():  # update these cases, keep the others (in the cases' order)
            old = json.loads(args.write.read_text())
            golden = merge(old["cases"], golden, "name")
            rows = merge(old["agreement"], rows, "case")
            ablations = merge(old["ablations"], ablations, "case") if ablations else old["ablations"]
            sources = {**old["produced_by"]["references"], **sources}
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(dict(
            produced_by=dict(script="scripts/reproduce_reference.py --write", references=sources,
                             entrgi=entrgi_commit(), **environment(args.threads)),
            agreement=rows, ablations=ablations, cases=golden), indent=1) + "\n")
        print(f"\nwrote {args.write} ({len(golden)} cases)")
    return 0 if all(r["after"] == r["n"] for r in rows) else 1


def merge(old: list[dict], new: list[dict], key: str) -> list[dict]:
    """``old`` records with those of ``new`` in their place (matched by ``key``), in the golden cases' order."""
    by_name = {**{x[key]: x for x in old}, **{x[key]: x for x in new}}
    return [by_name[c["name"]] for c in rc.cases() if c["name"] in by_name]


def markdown_table(rows: list[dict]) -> str:
    """The agreement table (docs/differences.md): rows and commits identical before / after the reproduction
    choices, and the largest reward differences."""
    lines = ["| case | rows identical, before | rows identical, after | per-step commits identical, after | "
             "max \\|Δ reward\\|, final (before → after) | max \\|Δ reward\\|, inner steps (after) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        final = "—" if r["d_reward"] is None else f"{fmt(r['before_d_reward'])} → {fmt(r['d_reward'])}"
        lines.append(f"| {r['case']} | {r['before']}/{r['n']} | {r['after']}/{r['n']} | {r['commits']}/{r['n']} | "
                     f"{final} | {fmt(r['d_step_reward'])} |")
    return "\n".join(lines)


def ablation_table(ablations: list[dict]) -> str:
    """Rows identical per case with each choice put back to the project's default alone (docs/differences.md);
    where every row still agrees, the largest reward difference (final, then inner steps) in brackets."""
    from entrgi.reproduction import Reproduction

    names = Reproduction.choices()
    lines = ["| case | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    for a in ablations:
        cells = []
        for n in names:
            e = a["effect"][n]
            diffs = [d for d in (e["d_reward"], e["d_step_reward"]) if d]
            extra = f" ({max(diffs):.1e})" if e["rows"] == a["n"] and diffs else ""
            cells.append(f"{e['rows']}/{a['n']}{extra}")
        lines.append(f"| {a['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def where(path: Path) -> str:
    """``path`` relative to the repository when inside it (else as given)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def entrgi_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def environment(threads: int) -> dict:
    import transformers

    return dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                machine=platform.machine(), threads=threads)


if __name__ == "__main__":
    sys.exit(main())
