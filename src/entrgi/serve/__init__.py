"""``entrgi serve``: an OpenAI-compatible guided-generation server with a live page (``docs/serving.md``).

- :mod:`.engine`: the loaded DLLM + RM pair, the server's default configs and limits;
- :mod:`.schemas`: request parsing and validation (OpenAI fields -> SamplerConfig / GuidanceConfig) and
  the OpenAI-format responses;
- :mod:`.scheduler`: the bounded queue and the worker that batches compatible requests;
- :mod:`.app`: the FastAPI app (``create_app``) and :class:`~entrgi.serve.app.BackgroundServer`;
- :mod:`.cli`: the ``entrgi serve`` command.

Importing this package needs nothing beyond entrgi; :mod:`.app` needs the ``serve`` extra (FastAPI, uvicorn).
"""
