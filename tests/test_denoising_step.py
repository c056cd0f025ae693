"""docs/denoising-step.md's custom loop runs as written (at most 25 lines) and gives generate's tokens."""

import contextlib
import io
import re
from pathlib import Path

from entrgi import generate, load_pair, model_defaults, resolve_settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "denoising-step.md"


def test_the_documented_loop_runs_and_equals_generate():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    out, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 (the project's own documentation)
    lines = out.getvalue().splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert len(steps) == 16 and all("slots committed, RM " in ln for ln in steps)  # every step is guided
    gains = [[float(v) for v in re.findall(r"[+-]\d+\.\d+", ln)] for ln in steps]
    assert sum(after - before for before, after in gains) > 0  # guidance raises the reward within a step
    model, reward = load_pair()
    s = resolve_settings(model_defaults=model_defaults(model), overrides={"method": "entrgi"})
    ref = generate(model, ["she was"], reward, sampler=s.sampler, guidance=s.guidance, progress=False)
    assert scope["tokens"] == [x.token_ids for g in ref.samples for x in g]
    assert lines[-1] == str([x.text for g in ref.samples for x in g])
