"""The spec of a GGUF model run in-process by llama.cpp: what a registry entry carries."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from router.backends.base import SpecBase


class LlamaCppSpec(SpecBase):
    """What an Ollama Modelfile carries: the weights, the template and default sampling."""

    backend: Literal["llama_cpp"] = "llama_cpp"
    gguf: str = Field(description="Path to a .gguf file, or bundled:<name> (see registry).")
    n_ctx: int = Field(default=2048, ge=16)
    n_threads: int | None = Field(default=None, ge=1, description="None: every core.")
    n_batch: int = Field(default=512, ge=1)
    n_gpu_layers: int = Field(default=0, ge=-1, description="-1 offloads every layer.")
    chat_format: str | None = Field(default=None, description="None: the GGUF's own template.")
    repeat_penalty: float = Field(default=1.0, ge=0)
    seed: int | None = None
    logits_all: bool = Field(
        default=False,
        description="Keep the logits of every position, which requests' logprobs need; "
        "costs n_ctx x vocabulary floats of memory and some prompt speed.",
    )
