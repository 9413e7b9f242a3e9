"""Every registry mistake ends in one exception from ``registry.errors`` that says what."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from registry.errors import InvalidModel, NotRegistered, RegistryError, RegistryUnavailable
from registry.store import Registry
from tests.servers import free_port


def test_missing_file(registry: Registry, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(InvalidModel, match=f"no such file: {missing}"):
        registry.register_gguf("chat", missing, params={})
    assert registry.is_empty()


def test_a_file_that_is_not_gguf(registry: Registry, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip file, not a model")
    with pytest.raises(InvalidModel, match="is not a GGUF file"):
        registry.register_gguf("chat", fake, params={})
    assert registry.is_empty()


def test_unknown_gguf_parameter(registry: Registry, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(InvalidModel, match="unknown GGUF parameters \\['temprature'\\]"):
        registry.register_gguf("chat", model, params={"temprature": 0.1})


def test_a_pasted_key_is_refused_as_api_key_env(registry: Registry) -> None:
    with pytest.raises(InvalidModel, match="NAME of an environment variable"):
        registry.register_endpoint(
            "chat", base_url="http://h/v1", remote_model="m", api_key_env="sk-abc-123", params={}
        )
    assert registry.is_empty()


@pytest.fixture
def one_route(registry: Registry) -> Registry:
    registry.register_endpoint(
        "chat", base_url="http://127.0.0.1:9/v1", remote_model="m", params={}, alias="champion"
    )
    return registry


def test_unknown_route_lists_the_routes(one_route: Registry) -> None:
    with pytest.raises(NotRegistered, match=r"no route 'chta' .*\(registered: chat\)"):
        one_route.resolve("chta", "champion")
    with pytest.raises(NotRegistered, match="no route 'chta'"):
        one_route.promote("chta", actor="a", reason="r")


def test_unset_alias_is_none_not_an_error(one_route: Registry) -> None:
    assert one_route.resolve("chat", "challenger") is None
    assert one_route.resolve("chat", "champion") is not None


def test_unknown_version(one_route: Registry) -> None:
    with pytest.raises(NotRegistered, match=r"route 'chat' has no version '5' \(versions: 1\)"):
        one_route.set_alias("chat", "challenger", "5")


def test_an_invalid_alias_name_is_a_registry_error(one_route: Registry) -> None:
    # MLflow reserves version-like alias names.
    with pytest.raises(RegistryError, match="v1"):
        one_route.set_alias("chat", "v1", "1")


@pytest.mark.usefixtures("fast_http_failures")
def test_unreachable_registry_names_the_uri(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"MLflow registry at {uri} is unreachable"):
        registry.resolve("chat", "champion")
    with pytest.raises(RegistryUnavailable) as caught:
        registry.routes()
    assert caught.value.uri == uri
    assert "connection refused" in str(caught.value)
    assert time.monotonic() - started < 20
