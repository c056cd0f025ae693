"""The ``entrgi`` model of lm-evaluation-harness: guided sampling on lm-eval's generation tasks.

    lm_eval --model entrgi --model_args pretrained=Dream-org/Dream-v0-Instruct-7B,reward=Skywork/...,preset=fast \
        --tasks path/to/task.yaml          # a task file that names an entrgi function (below), or:
    entrgi-lm-eval --model entrgi --model_args ... --tasks gsm8k     # lm-eval's CLI with this model registered

Registration: importing this module registers :class:`EntrgiLM` as ``entrgi`` with lm-eval's public
``register_model``. Released lm-eval (0.4.x) looks models up in its own registry only, so something must import
this module before the model is built: ``entrgi-lm-eval`` (lm-eval's own CLI, run after the import), a task YAML
given to ``lm_eval --tasks`` by path that names a function of this module (``metric: !function
entrgi.integrations.lm_eval.reference_numeric``; lm-eval resolves a YAML path's functions before it builds the
model), or ``import entrgi.integrations.lm_eval`` before ``lm_eval.simple_evaluate(model="entrgi", ...)``.

Settings: this module has no resolution of its own. The model_args are one layer of
:func:`entrgi.settings.resolve_settings` (the config layer, named ``model_args`` in errors) over the model's
defaults (:func:`entrgi.settings.model_defaults`); a request's gen_kwargs are the layer above them (``max_gen_toks``
-> ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``; ``until`` cuts the response). The resolved
:meth:`~entrgi.settings.RunSettings.to_dict` is what lm-eval's results record. docs/evaluation.md
("lm-evaluation-harness") lists every argument.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lm_eval.models  # noqa: F401  - fills lm-eval's registry first: its lookup imports them only into an empty one
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..config import GuidanceConfig, SamplerConfig, SearchConfig, check_choice, method_name
from ..reward.reference import MATCHES, cut_at_stops, reference_rewards
from ..settings import RunSettings, model_defaults, resolve_settings

#: model_args of this model that are not settings fields, with their defaults.
OWN_ARGS: dict[str, Any] = {
    "pretrained": None, "family": None, "reward": None, "reward_template": "auto", "text_reward": None,
    "reference_field": None, "dtype": None, "device": None, "device_map": None, "rm_checkpointing": False,
    "sampling_from": "model", "use_chat_template": None, "batch_size": 1, "max_batch_size": None,
}
#: The spellings of :func:`entrgi.settings.resolve_settings` that stand for several fields.
SPELLINGS = ("method", "preset")
#: SamplerConfig.batch_size (rows per forward) is not an argument: lm-eval's `batch_size` is requests per call.
SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.name != "batch_size")
GUIDANCE_FIELDS = tuple(f.name for f in dataclasses.fields(GuidanceConfig))
#: SearchConfig's fields; its ``strategy`` is the argument ``search`` (as ``entrgi generate --search``).
SEARCH_ARGS = {("search" if f.name == "strategy" else f.name): f.name for f in dataclasses.fields(SearchConfig)}
SECTION_OF = {**{k: ("sampler", k) for k in SAMPLER_FIELDS}, **{k: ("guidance", k) for k in GUIDANCE_FIELDS},
              **{k: ("search", v) for k, v in SEARCH_ARGS.items()}}
assert len(SECTION_OF) == len(SAMPLER_FIELDS) + len(GUIDANCE_FIELDS) + len(SEARCH_ARGS), "a field in two sections"
REWARD_TEMPLATES = ("auto", "chat", "plain", "response")
#: The `device` lm-eval's CLI passes when `--device` is not given (used as "cpu" on a machine without CUDA).
LM_EVAL_DEFAULT_DEVICE = "cuda:0"
SAMPLING_FROM = ("model", "task")
#: gen_kwargs aliases of the response length, in lm-eval's order of priority.
LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k")
PREFIX = "entrgi model_args: "
#: How errors of :func:`entrgi.settings.resolve_settings` name the layers.
MODEL_ARGS_SOURCE = "model_args"
REQUEST_SOURCE = "the request's gen_kwargs"


def _error(message: str) -> ValueError:
    return ValueError(PREFIX + message)


def check_model_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """``model_args`` with :data:`OWN_ARGS` defaults filled in; a one-line ``ValueError`` naming the first unknown
    key or bad value of this model's own arguments (settings fields are checked by the settings resolution)."""
    known = (*OWN_ARGS, *SPELLINGS, *SECTION_OF)
    for key in model_args:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise _error(f"unknown argument `{key}`.{hint} Arguments: see docs/evaluation.md.")
    args = {**OWN_ARGS, **model_args}
    if "method" in model_args and model_args["method"] is None:
        args["method"] = "none"  # lm-eval reads `method=none` as None
    for key in ("pretrained", "family", "reward", "text_reward", "reference_field", "device", "device_map"):
        if args[key] is not None and not isinstance(args[key], str):
            raise _error(f"`{key}` must be a string, got {args[key]!r}.")
    for key in ("rm_checkpointing",):
        if not isinstance(args[key], bool):
            raise _error(f"`{key}` must be true or false, got {args[key]!r}.")
    if args["use_chat_template"] is not None and not isinstance(args["use_chat_template"], bool):
        raise _error(f"`use_chat_template` must be true, false or none (the model's default), got "
                     f"{args['use_chat_template']!r}.")
    try:
        check_choice("reward_template", args["reward_template"], REWARD_TEMPLATES)
        check_choice("sampling_from", args["sampling_from"], SAMPLING_FROM)
        if args.get("preset") is not None:
            from ..presets import get_preset
            try:
                get_preset(args["preset"])
            except ValueError as e:
                raise ValueError(f"`preset`: {e}") from None
        referenced = []
        for key in ("reward", "text_reward", "potential_reward"):
            try:
                if uses_reference(args.get(key)):
                    referenced.append(key)
            except ValueError as e:
                raise ValueError(f"`{key}`: {e}") from None
        if referenced and args["reference_field"] is None:
            raise ValueError(f"`reference_field` is required with a reference reward (`{referenced[0]}` = "
                             f"{args[referenced[0]]!r}): name the document field that holds the reference answer "
                             "(e.g. reference_field=answer).")
        if args["reference_field"] is not None and not referenced:
            raise ValueError("`reference_field` is set but neither `reward`, `text_reward` nor `potential_reward` is "
                             f"a reference reward (reference:{'/'.join(MATCHES)} or reference:MODULE:FUNCTION).")
        from ..dtypes import dtype_from_name
        dtype_from_name(args["dtype"], "`dtype`")
    except ValueError as e:
        raise _error(str(e)) from None
    size = args["batch_size"]
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _error(f"`batch_size` must be a positive integer (requests per sampler call; 'auto' is not "
                     f"supported), got {size!r}.")
    args["batch_size"] = size
    return args


def uses_reference(spec: str | None) -> bool:
    """True when the reward spelling ``spec`` is (or sums) a ``reference:`` reward; a bad spelling is a
    ``ValueError``."""
    from ..reward.registry import COMPOSITE_KIND, split_composite_spec, split_reward_spec

    if spec is None:
        return False
    if not isinstance(spec, str):
        raise ValueError(f"must be a reward spelling, got {spec!r}.")
    kind, target = split_reward_spec(spec)
    if kind == COMPOSITE_KIND:
        return any(uses_reference(member) for _, member in split_composite_spec(target))
    return kind == "reference"


def settings_layer(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The settings fields of ``model_args`` (its other arguments left out) as a layer of :func:`entrgi.settings.resolve_settings`: each field in
    its section (``search`` = ``SearchConfig.strategy``), ``method`` and ``preset`` as they are."""
    layer: dict[str, Any] = {"sampler": {}, "guidance": {}, "search": {}}
    for key, value in model_args.items():
        if key in SECTION_OF:
            section, field = SECTION_OF[key]
            layer[section][field] = value
        elif key in SPELLINGS and value is not None:
            layer[key] = value
    if "method" in model_args:  # lm-eval reads `method=none` as None
        layer["method"] = model_args["method"] or "none"
    return layer


def run_settings(model_args: Mapping[str, Any], request: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Any] | None = None) -> RunSettings:
    """:func:`entrgi.settings.resolve_settings` of ``defaults`` (the model's layer; default: the embedded pair's
    without ``pretrained``, none before a model is loaded) < ``model_args`` (:func:`settings_layer`) < ``request``
    (sampler fields of one request: :func:`request_fields`). A ``ValueError`` names the field and its layer."""
    if defaults is None:
        defaults = model_defaults(None) if model_args.get("pretrained") is None else {}
    return resolve_settings(model_defaults=defaults, config=settings_layer(model_args),
                            overrides={"sampler": dict(request)} if request else None,
                            config_source=MODEL_ARGS_SOURCE, overrides_source=REQUEST_SOURCE)


def gen_kwargs_request(gen_kwargs: Mapping[str, Any], sampling_from: str) -> tuple[dict[str, Any], list[str]]:
    """``(SamplerConfig fields, stop strings)`` of a request's gen_kwargs: the first of :data:`LENGTH_KEYS` given
    is L (``max_new_tokens``); ``until`` (a string or a list) the stops; with ``sampling_from='task'``,
    ``do_sample=False`` is τ = 0, else ``temperature`` / ``top_p`` / ``top_k`` are the sampler's."""
    until = gen_kwargs.get("until")
    stops = [until] if isinstance(until, str) else list(until or [])
    if not all(isinstance(s, str) for s in stops):
        raise ValueError(f"gen_kwargs `until` must be a string or a list of strings, got {until!r}.")
    fields: dict[str, Any] = {}
    length = next((gen_kwargs[k] for k in LENGTH_KEYS if gen_kwargs.get(k) is not None), None)
    if length is not None:
        fields["max_new_tokens"] = int(length)
    if sampling_from == "task":
        if gen_kwargs.get("do_sample") is False:
            fields["temperature"] = 0.0
        elif gen_kwargs.get("temperature") is not None:
            fields["temperature"] = float(gen_kwargs["temperature"])
        for key in ("top_p", "top_k"):
            if gen_kwargs.get(key) is not None:
                fields[key] = gen_kwargs[key]
    return fields, stops


def request_fields(model_args: Mapping[str, Any], base: RunSettings, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The request layer: ``fields`` (:func:`gen_kwargs_request`, a repeat's ``seed``). A request that changes L
    needs nothing more: the resolution fits the model's own T and blocks to the final L
    (:func:`entrgi.settings.fit_model_defaults`), and a preset's ``steps_fraction`` applies to it, as for
    ``entrgi generate``."""
    return dict(fields)


def batches(jobs: Sequence[Job], size: int) -> Iterator[list[Job]]:
    """``jobs`` in order, ``size`` at most per batch, a new batch where a prompt would repeat (the references of
    a batch are looked up by prompt)."""
    batch: list[Job] = []
    for job in jobs:
        if len(batch) == size or any(j.context == job.context for j in batch):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


@dataclass
class Job:
    """One request: its position in lm-eval's list, prompt, stop strings, reference answer and settings."""

    index: int
    context: str
    stops: list[str]
    reference: str | None
    settings: RunSettings
    gen_kwargs: dict


@register_model("entrgi")
class EntrgiLM(LM):
    """lm-eval's ``generate_until`` with entrgi's guided samplers (any model_args of docs/evaluation.md).

    Each request samples K = ``num_samples`` responses and returns one: the best by ``text_reward`` if given,
    else by the reward (Top@1), else the first; cut at the request's ``until`` strings as lm-eval cuts them.
    Requests with the same settings run ``batch_size`` at a time; every sample's random stream depends only on
    the seed, the prompt and the sample index, so results do not depend on the batch. lm-eval's ``repeats``
    (the same request n times) run with seeds ``seed``, ``seed + 1``, ....
    """

    def __init__(self, **model_args: Any):
        super().__init__()
        try:
            self._setup(model_args)
        except ValueError as e:  # one line, naming the argument (the checks and the loaders name it)
            text = " ".join(str(e).split())
            raise (e if text == str(e) and text.startswith(PREFIX) else _error(text.removeprefix(PREFIX))) from None

    def _setup(self, model_args: Mapping[str, Any]) -> None:
        self.args = a = check_model_args(model_args)
        try:
            settings = run_settings(a)  # every field checked before any model work
        except ValueError as e:
            raise _error(str(e)) from None
        method = method_name(settings.guidance, settings.search)
        from ..pair import check_differentiable, check_pair, load_pair

        check_pair(a["pretrained"], a["reward"], [method], flags=("pretrained", "reward"))
        import torch

        device = a["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            device = "cpu"  # lm-eval passes its default device always; its own HF model falls back the same way
        if a["device_map"] is None:
            from ..pair import check_device
            check_device(device, "device")
        from ..reward.registry import load_reward

        self.text_reward = self.potential = None
        for key in ("text_reward", "potential_reward"):  # first: a misspelt one fails before the models load
            spec = a.get(key)
            if spec is not None:
                try:
                    loaded = load_reward(spec, device=device, template=a["reward_template"])
                except ValueError as e:
                    raise _error(f"`{key}`: {e}") from None
                setattr(self, "text_reward" if key == "text_reward" else "potential", loaded)
        self.dllm, self.reward = load_pair(a["pretrained"], a["reward"], methods=[method], family=a["family"],
                                           dtype=a["dtype"], device=device, device_map=a["device_map"],
                                           reward_template=a["reward_template"],
                                           rm_checkpointing=a["rm_checkpointing"], flags=("pretrained", "reward"))
        if a["use_chat_template"] is not None:
            self.dllm.use_chat_template = a["use_chat_template"]
        self.defaults = model_defaults(self.dllm)  # the loaded model's layer (a checkpoint's generation config)
        self.settings = run_settings(a, defaults=self.defaults)
        if self.settings.guidance.guided:
            check_differentiable(self.reward, a["reward"],
                                 f"method {method_name(self.settings.guidance, self.settings.search)!r}")
        self.references = [*reference_rewards(self.reward), *reference_rewards(self.text_reward),
                           *reference_rewards(self.potential)]
        if self.references and a["reference_field"] is None:
            raise _error(f"`reference_field` is required with a reference reward ({self.references[0].name!r}): name "
                         "the document field that holds the reference answer (e.g. reference_field=answer).")
        self.batch_size = a["batch_size"]
        self._device = device
        self._warned: set[str] = set()

    def request_settings(self, fields: Mapping[str, Any]) -> RunSettings:
        """The settings of one request: :func:`run_settings` with the request layer of ``fields``."""
        if not fields:
            return self.settings
        return run_settings(self.args, request_fields(self.args, self.settings, fields), defaults=self.defaults)

    # ---- lm-eval's interface ----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs, repeats = [], {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            repeat = repeats.get(id(req), 0)  # lm-eval's `repeats` pass one Instance n times
            repeats[id(req)] = repeat + 1
            jobs.append(self._job(i, req, context, gen_kwargs, repeat))
        groups: dict[RunSettings, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.settings, []).append(job)
        out: list[str | None] = [None] * len(jobs)
        bar = tqdm(total=len(jobs), disable=disable_tqdm, desc="entrgi generate_until")
        for settings, group in groups.items():
            for batch in batches(group, self.batch_size):
                for job, text in zip(batch, self._run(settings, batch)):
                    out[job.index] = text
                    self.cache_hook.add_partial("generate_until", (job.context, job.gen_kwargs), text)
                bar.update(len(batch))
        bar.close()
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the entrgi model runs guided generation (generate_until tasks) only; loglikelihood tasks (multiple "
            "choice, perplexity) never run a sampler, so guidance cannot change them: score them with lm-eval's own "
            "model for the DLLM (e.g. the Dream / LLaDA harnesses).")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the entrgi model runs guided generation (generate_until tasks) only; loglikelihood_rolling (perplexity "
            "tasks) never runs a sampler: use lm-eval's own model for the DLLM.")

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.dllm.tokenizer, "name_or_path", "entrgi")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.dllm.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template``: the tokenizer's template as text; the contexts then come templated,
        so the model no longer wraps them in its own."""
        self.dllm.use_chat_template = False
        return self.dllm.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                       add_generation_prompt=add_generation_prompt)

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results ``config``: the resolved settings (:meth:`RunSettings.to_dict`) before any
        request changes them, the models and the paper's name of the method."""
        s = self.settings
        return {"entrgi": {"pretrained": self.args["pretrained"], "reward": self.args["reward"],
                           "text_reward": self.args["text_reward"], "method": method_name(s.guidance, s.search),
                           **s.to_dict()}}

    # ---- one request, one batch ----------------------------------------------------------------------
    def _job(self, index: int, req, context: str, gen_kwargs: dict, repeat: int) -> Job:
        ignored = sorted(set(gen_kwargs) - {"until", *LENGTH_KEYS, *SAMPLING_KEYS})
        if self.args["sampling_from"] == "model":
            asked = {k: gen_kwargs[k] for k in SAMPLING_KEYS if k in gen_kwargs}
            if asked:
                self._warn_once("sampling", f"entrgi: the request asks for {asked}; the sampler's own temperature / "
                                            "top_p / top_k are used (model_args sampling_from=task to use the task's).")
        if ignored:
            self._warn_once(f"ignored {ignored}", f"entrgi: gen_kwargs {ignored} have no entrgi meaning; ignored.")
        where = f"request {index} (task {req.task_name!r}, doc {req.doc_id})"
        try:
            fields, stops = gen_kwargs_request(gen_kwargs, self.args["sampling_from"])
            if repeat:
                fields["seed"] = self.settings.sampler.seed + repeat
            settings = self.request_settings(fields)
        except ValueError as e:
            raise ValueError(f"entrgi: {where}, gen_kwargs {gen_kwargs}: {e}") from None
        return Job(index, context, stops, self._reference(req, where), settings, gen_kwargs)

    def _reference(self, req, where: str) -> str | None:
        field = self.args["reference_field"]
        if field is None:
            return None
        doc = req.doc if isinstance(req.doc, Mapping) else {}
        if field not in doc:
            raise ValueError(f"entrgi: `reference_field` {field!r}: the document of {where} has no such field; its "
                             f"fields are {sorted(doc)}.")
        return str(doc[field])

    def _run(self, settings: RunSettings, batch: list[Job]) -> list[str]:
        """Sample the batch's prompts and return each one's picked response, cut at its stop strings."""
        from ..sampling.sampler import generate

        prompts = [job.context for job in batch]
        for reward in self.references:  # the verifier's answers for this batch, keyed by prompt
            reward.set_references({j.context: j.reference for j in batch}, {j.context: j.stops for j in batch})
        potential = None
        if settings.search.strategy == "particles":  # as `entrgi eval`: the search's spelling, else the text reward
            potential = self.potential if self.potential is not None else self.text_reward
        out = generate(self.dllm, prompts, self.reward, sampler=settings.sampler, guidance=settings.guidance,
                       search=settings.search, potential_reward=potential, progress=False)
        return [cut_at_stops(self._pick(job.context, out.samples[i]).text, job.stops) for i, job in enumerate(batch)]

    def _pick(self, prompt: str, group):
        """The returned sample: the best by ``text_reward``, else by the reward (first of equals), else the first."""
        if len(group) == 1:
            return group[0]
        if self.text_reward is not None:
            scores = [float(v) for v in self.text_reward.score_texts([prompt] * len(group), [s.text for s in group])]
        elif group[0].reward is not None:
            scores = [s.reward for s in group]
        else:
            return group[0]
        return group[max(range(len(group)), key=scores.__getitem__)]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


# ---- task metrics: the reference rewards' matches as lm-eval metrics (`metric: !function ...`) -------------
def _mean_match(match, references: Sequence[str], predictions: Sequence[str]) -> float:
    pairs = list(zip(predictions, references))
    return sum(match(str(p), str(r)) for p, r in pairs) / max(len(pairs), 1)


def reference_exact(references: Sequence[str], predictions: Sequence[str], **_: Any) -> float:
    """lm-eval metric: :func:`entrgi.reward.reference.exact` of prediction and target (``reference:exact``'s score)."""
    return _mean_match(MATCHES["exact"], references, predictions)


def reference_numeric(references: Sequence[str], predictions: Sequence[str], **_: Any) -> float:
    """lm-eval metric: :func:`entrgi.reward.reference.numeric` of prediction and target (``reference:numeric``)."""
    return _mean_match(MATCHES["numeric"], references, predictions)


def reference_contains(references: Sequence[str], predictions: Sequence[str], **_: Any) -> float:
    """lm-eval metric: :func:`entrgi.reward.reference.contains` of prediction and target (``reference:contains``)."""
    return _mean_match(MATCHES["contains"], references, predictions)


def main() -> int:
    """``entrgi-lm-eval ARGS``: lm-eval's command line (``lm_eval ARGS``) with the ``entrgi`` model registered, so
    tasks can be named (``--tasks gsm8k``); a user error is one line (``ENTRGI_DEBUG=1``: the traceback)."""
    from lm_eval.__main__ import cli_evaluate

    from ..cli.errors import run_command

    def run() -> int:
        cli_evaluate()
        return 0

    return run_command("lm-eval", run, os.environ.get("ENTRGI_DEBUG", "") not in ("", "0"))


__all__ = ["EntrgiLM", "check_model_args", "gen_kwargs_request", "main", "reference_contains", "reference_exact",
           "reference_numeric", "request_fields", "run_settings", "settings_layer"]
