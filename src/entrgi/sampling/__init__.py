"""The denoising loop: commit schedules and confidence rules (:mod:`.schedule`), the sampler (:mod:`.sampler`),
the particle sampler (:mod:`.particles`) and what they return (:mod:`.outputs`); docs/method.md §1, §4."""
