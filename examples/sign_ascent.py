"""A user optimiser for the inner loop: sign ascent, φ ← (1 − decay)·φ + lr·sign(∇R), with its own parameter ``decay``.

    entrgi generate --plugin examples/sign_ascent.py --optimizer sign_ascent --optimizer-param decay=0.01 \\
        --prompt "she was"

Registered on import; ``python examples/sign_ascent.py`` runs it against Adam on the embedded default pair.
"""

import torch

from entrgi import GuidanceConfig, SamplerConfig, generate, load_pair, register_optimizer


class SignAscent(torch.optim.Optimizer):
    """Steps of size ``lr`` along the sign of the gradient of the loss −R, after shrinking φ by ``decay``."""

    def __init__(self, params, lr: float, decay: float = 0.0):
        super().__init__(params, {"lr": lr, "decay": decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["decay"]).add_(p.grad.sign(), alpha=-group["lr"])


register_optimizer("sign_ascent", lambda params, lr, decay: SignAscent(params, lr, decay), params={"decay": 0.0},
                   description="φ ← (1 − decay)·φ + lr·sign(∇R)")

if __name__ == "__main__":
    model, reward = load_pair()
    for g in (GuidanceConfig(lr=1.0), GuidanceConfig(optimizer="sign_ascent", lr=0.5)):
        out = generate(model, ["she was", "the weather was"], reward, sampler=SamplerConfig(max_new_tokens=16, steps=16),
                       guidance=g, progress=False)
        print(f"{g.optimizer:>12}: Top@1 {[round(r, 2) for r in out.top1()]}  {out.best(0).text!r}")
