"""GGUF models run in-process by llama.cpp (llama-cpp-python).

Each module depends only on those listed before it:

- ``spec``: :class:`LlamaCppSpec`, what a model's entry carries.
- ``sampling``: OpenAI's sampling values checked and put in llama.cpp's terms; logprobs
  back in OpenAI's.
- ``tools``: the ``<tool_call>`` tag: scanning a stream for it, parsing calls, call ids.
- ``messages``: OpenAI messages as the text turns a chat template renders, tools included.
- ``chat_format``: the chat handler llama-cpp-python picks, and the template inside it.
- ``plan``: a request's fields mapped to llama.cpp (tools, response_format, logprobs,
  penalties, ``n``), or refused with a 400.
- ``emit``: a generation's pieces as deltas: text, or tool calls.
- ``choices``: a whole answer's choices gathered from their deltas.
- ``backend``: :class:`LlamaCppBackend`: loading, the worker thread, generation,
  ``stream`` and ``complete``.
"""

from router.backends.llama_cpp.backend import LlamaCppBackend
from router.backends.llama_cpp.spec import LlamaCppSpec

__all__ = ["LlamaCppBackend", "LlamaCppSpec"]
