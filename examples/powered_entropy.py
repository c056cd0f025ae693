"""A user guidance rule with its own parameter: w = (H(q)/log V) ** power, EntRGi's weight sharpened (power > 1)
or flattened (power < 1); power = 1 is EntRGi.

    entrgi generate --plugin examples/powered_entropy.py --rule powered_entropy --rule-param power=2.0 \\
        --prompt "she was"

Registered on import; ``python examples/powered_entropy.py`` compares powers on the embedded default pair.
"""

from entrgi import GuidanceConfig, SamplerConfig, entropy_weight, generate, load_pair, register_guidance_rule


@register_guidance_rule("powered_entropy", params={"power": 1.0}, description="w = (H / log V) ** power")
def powered_entropy(logits, entropy_temperature, power):
    return entropy_weight(logits, entropy_temperature) ** power


if __name__ == "__main__":
    model, reward = load_pair()
    for power in (0.5, 1.0, 2.0):
        g = GuidanceConfig(rule="powered_entropy", rule_params={"power": power}, lr=1.0)
        out = generate(model, ["she was", "the weather was"], reward, sampler=SamplerConfig(max_new_tokens=16, steps=16),
                       guidance=g, progress=False)
        print(f"power {power}: Top@1 {[round(r, 2) for r in out.top1()]}  {out.best(0).text!r}")
