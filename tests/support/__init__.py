"""Test support: tiny in-memory models and tokenizers, tiny on-disk checkpoints, the slow reference sampler."""
