"""Bridges from entrgi to other tools (each needs its own extra); nothing in entrgi's core imports them.

- :mod:`entrgi.integrations.lm_eval`: the ``entrgi`` model of lm-evaluation-harness (``pip install entrgi[lm-eval]``,
  docs/evaluation.md).
"""
