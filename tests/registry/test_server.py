"""The same registry API against a real ``mlflow server`` over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.bundled import smollm2_path
from registry.store import Registry


@pytest.fixture
def remote(mlflow_server: str, tmp_path: Path) -> Registry:
    """A client of the server, with its own download cache (a second machine, say)."""
    return Registry(mlflow_server, cache_dir=tmp_path / "cache")


def test_gguf_over_http_is_downloaded_once_into_the_cache(remote: Registry, tmp_path: Path) -> None:
    version = remote.register_gguf(
        "server-gguf", smollm2_path(), params={"n_ctx": 512}, alias="champion"
    )
    resolved = remote.resolve("server-gguf", "champion")
    assert resolved is not None
    assert (resolved.version, resolved.flavour) == (version, "gguf")
    assert resolved.params["n_ctx"] == 512
    assert resolved.gguf_path is not None
    assert resolved.gguf_path.parent == tmp_path / "cache" / "server-gguf" / version
    assert resolved.gguf_path.read_bytes()[:4] == b"GGUF"
    assert resolved.gguf_path.stat().st_size == smollm2_path().stat().st_size
    # Only the file: no temporary download directories left behind.
    assert sorted(p.name for p in resolved.gguf_path.parent.iterdir()) == [resolved.gguf_path.name]

    mtime = resolved.gguf_path.stat().st_mtime_ns
    again = Registry(remote.tracking_uri, cache_dir=tmp_path / "cache").resolve(
        "server-gguf", "champion"
    )
    assert again is not None and again.gguf_path == resolved.gguf_path
    assert resolved.gguf_path.stat().st_mtime_ns == mtime  # not downloaded again


def test_endpoint_and_promotion_over_http(remote: Registry) -> None:
    v1 = remote.register_endpoint(
        "server-remote",
        base_url="http://127.0.0.1:9/v1",
        remote_model="a",
        params={"temperature": 0.2},
        alias="champion",
    )
    v2 = remote.register_endpoint(
        "server-remote",
        base_url="http://127.0.0.1:9/v1",
        remote_model="b",
        params={},
        alias="challenger",
    )
    challenger = remote.resolve("server-remote", "challenger")
    assert challenger is not None
    assert (challenger.version, challenger.flavour) == (v2, "openai")
    assert challenger.params["remote_model"] == "b"
    assert "server-remote" in remote.routes()

    result = remote.promote("server-remote", actor="test", reason="http", decision_id="d-http")
    assert (result.champion, result.previous, result.challenger) == (v2, v1, None)
    champion = remote.resolve("server-remote", "champion")
    assert champion is not None and champion.version == v2
    tags = remote.client.get_model_version("server-remote", v2).tags
    assert tags["canary.decision_id"] == "d-http"
    assert not remote.promote("server-remote", actor="test", reason="again").changed
