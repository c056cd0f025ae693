"""``entrgi serve``: an OpenAI-compatible guided-generation server with a live page (docs/serving.md).

:mod:`.engine` holds the loaded pair and limits, :mod:`.schemas` parses requests into SamplerConfig /
GuidanceConfig, :mod:`.scheduler` batches compatible requests, :mod:`.app` is the FastAPI app and
:mod:`.cli` the command. Importing this package needs nothing beyond entrgi; :mod:`.app` needs the ``serve`` extra.
"""
