"""Model backends behind one interface, and the factory that builds one from its spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.backends.fake import FakeBackend, FakeSpec
from router.backends.llama_cpp import LlamaCppBackend, LlamaCppSpec
from router.backends.mlflow_pyfunc import PyfuncBackend, PyfuncSpec
from router.backends.openai_http import OpenAIBackend, OpenAISpec

#: A model spec, told apart by its ``backend`` field.
BackendSpec = Annotated[
    LlamaCppSpec | OpenAISpec | PyfuncSpec | FakeSpec, Field(discriminator="backend")
]

__all__ = [
    "Backend",
    "BackendSpec",
    "ChatParams",
    "Completion",
    "Delta",
    "FakeBackend",
    "FakeSpec",
    "LlamaCppBackend",
    "LlamaCppSpec",
    "OpenAIBackend",
    "OpenAISpec",
    "PyfuncBackend",
    "PyfuncSpec",
    "SpecBase",
    "Usage",
    "build_backend",
]


def build_backend(spec: SpecBase, *, resolve_gguf: Callable[[str], Path]) -> Backend:
    """A backend for ``spec``, not yet started. ``resolve_gguf`` turns ``gguf`` into a file."""
    if isinstance(spec, LlamaCppSpec):
        return LlamaCppBackend(spec, model_path=str(resolve_gguf(spec.gguf)))
    if isinstance(spec, OpenAISpec):
        return OpenAIBackend(spec)
    if isinstance(spec, PyfuncSpec):
        return PyfuncBackend(spec)
    if isinstance(spec, FakeSpec):
        return FakeBackend(spec)
    raise TypeError(f"no backend for {type(spec).__name__}")
