"""Pure tensor primitives shared by the sampler and the guidance loop: temperature / top-k / top-p filters and
draws on logits (:mod:`.logit_ops`), and one random stream per (prompt, sample) (:mod:`.rng`)."""
