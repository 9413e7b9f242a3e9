"""The bundled models become route ``chat`` in an empty registry, once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from registry.bundled import GEMMA3_PARAMS, register_bundled
from registry.store import Registry


def test_register_bundled_fills_an_empty_registry_once(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models_dir = tmp_path / "models"
    assert register_bundled(registry, models_dir) is True
    assert "bundled models" in capsys.readouterr().err  # the tqdm bar, on stderr

    champion = registry.resolve("chat", "champion")
    challenger = registry.resolve("chat", "challenger")
    assert champion is not None and challenger is not None
    assert champion.gguf_path is not None and challenger.gguf_path is not None
    assert champion.gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert champion.params["n_ctx"] == 2048
    assert champion.params["chat_format"] is None  # SmolLM2's own template
    assert "gemma" in challenger.gguf_path.name.lower()
    assert challenger.gguf_path.read_bytes()[:4] == b"GGUF"
    for key, value in GEMMA3_PARAMS.items():
        assert challenger.params[key] == value
    assert challenger.params["chat_format"] == "alpaca"
    assert challenger.params["stop"] == ["###"]

    assert register_bundled(registry, models_dir) is False
    (chat,) = registry.describe()
    assert len(chat.versions) == 2

    # Gemma is a base model: through its registered template it must still answer words.
    ask = registry.load_chat_pyfunc(challenger)
    answer = ask(
        [{"role": "user", "content": "What is the capital of France?"}],
        {"max_tokens": 24, "temperature": 0.0},
    )
    assert sum(ch.isalpha() for ch in answer) >= 3, answer


def test_two_first_runs_at_once_register_the_models_once(
    registry: Registry, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: register_bundled(registry, models_dir), range(2)))
    assert sorted(results) == [False, True]
    (chat,) = registry.describe()
    assert len(chat.versions) == 2
