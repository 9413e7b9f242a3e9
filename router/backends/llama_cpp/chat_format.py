"""The chat handler llama-cpp-python picks for a model, and the template inside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from llama_cpp import Llama


def chat_handler(llm: Llama) -> Any:
    """The handler ``create_chat_completion`` would use (llama-cpp-python's choice)."""
    from llama_cpp import llama_chat_format

    return (
        llm.chat_handler
        or llm._chat_handlers.get(cast(str, llm.chat_format))
        or llama_chat_format.get_chat_completion_handler(cast(str, llm.chat_format))
    )


def chat_formatter(llm: Llama) -> Callable[..., Any] | None:
    """The template inside the chat handler (the GGUF's Jinja template or a named format
    such as "chatml"); None for a handler that is more than a template."""
    handler = chat_handler(llm)
    names = getattr(getattr(handler, "__code__", None), "co_freevars", ())
    cells = getattr(handler, "__closure__", None) or ()
    found = dict(zip(names, (c.cell_contents for c in cells), strict=False))
    formatter = found.get("chat_formatter")
    return formatter if callable(formatter) else None
