"""Two guidance rules, registered on import: ``max_prob`` (w = the slot's largest probability), ``half`` (w = 0.5).

A rule maps the masked slots' logits (..., V) to a weight w (...,) in [0, 1]; the reward model then reads
(1 − w)·ē + w·ẽ with the gradient of ē (docs/method.md (6), docs/extending.md). From the command line:

    entrgi generate --plugin examples/custom_guidance.py --method max_prob --prompt "she was"

``python examples/custom_guidance.py`` compares them with EntRGi on the embedded default pair.
"""

from entrgi import GuidanceConfig, SamplerConfig, generate, load_pair, register_guidance_rule


@register_guidance_rule("max_prob", description="w = max_v softmax(φ)_v: confident slots read the sampled token")
def max_prob(logits, entropy_temperature):
    return logits.softmax(-1).amax(-1)


@register_guidance_rule("half", description="w = 0.5: halfway between Expectation (0) and APS (1)")
def half(logits, entropy_temperature):
    return logits.new_full(logits.shape[:-1], 0.5)


if __name__ == "__main__":
    model, reward = load_pair()  # the embedded default pair
    sampler = SamplerConfig(max_new_tokens=16, steps=16, num_samples=4)
    prompts = ["she was", "the weather"]
    for method in ("entrgi", "max_prob", "half"):
        out = generate(model, prompts, reward, sampler=sampler, guidance=GuidanceConfig(rule=method), progress=False)
        best = [out.best(i) for i in range(len(prompts))]
        print(f"{method:>9}: best rewards {[round(b.reward, 2) for b in best]}  e.g. {best[0].text!r}")
