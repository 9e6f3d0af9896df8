"""A small LLM inference path for the ExpertActor (gpt-fast style: a few files, one job each).

* :mod:`actors.llm.loader`: find a model (the bundled SmolLM2 GGUF, a local Hugging Face
  directory, or the trivial ``echo`` model), dequantise once into a cache, load it.
* :mod:`actors.llm.generate`: sampling parameters, the token loop with a KV cache, stop strings,
  streaming and measured TTFT / TPOT.
* :mod:`actors.llm.llama` + :mod:`actors.llm.tokenizer`: the native engine (a plain-torch Llama,
  ``tokenizers`` and a jinja2 chat template), which serves without importing transformers.
* :mod:`actors.llm.echo`: the trivial echo model (no torch), for overhead benchmarks and tests.

Nothing here imports torch or transformers at import time.
"""
