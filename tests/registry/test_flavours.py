"""The chat flavours as plain MLflow pyfunc models: GGUF, remote endpoint, any chat pyfunc."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import mlflow
import pytest
from mlflow.pyfunc import PyFuncModel, PythonModel

from registry.bundled import smollm2_path
from registry.flavours import FLAVOUR_TAG, answer_text, load_chat_pyfunc
from registry.store import Registry
from registry.uris import mlflow_uris
from router.backends import FakeSpec
from router.backends.fake_server import create_fake_openai_app
from tests.servers import ServerThread, serve

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
Json = dict[str, Any]


def chat(model: PyFuncModel, messages: list[dict[str, str]], **params: Any) -> Json:
    """``predict`` as a user calls it; our flavours answer a chat.completion dict."""
    return cast(Json, model.predict({"messages": messages}, params=params or None))


def chat_stream(model: PyFuncModel, messages: list[dict[str, str]], **params: Any) -> list[Json]:
    chunks = model.predict_stream({"messages": messages}, params=params or None)
    return [cast(Json, c) for c in chunks]


@pytest.fixture
def uses(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point MLflow's own settings at a registry, as a user of plain MLflow would."""

    def use(registry: Registry) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)

    return use


# -- GGUF ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_model(smollm2_registry: Registry) -> PyFuncModel:
    """SmolLM2 loaded through MLflow alone, by alias (once per module: ~1 s)."""
    with mlflow_uris(smollm2_registry.tracking_uri):
        return mlflow.pyfunc.load_model("models:/r@champion")


def test_gguf_predict_answers_a_chat_completion(gguf_model: PyFuncModel) -> None:
    out = chat(gguf_model, MESSAGES, temperature=0.0)
    assert out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] > 0
    # max_tokens=12 is the version's default; the request left it out.
    assert 0 < out["usage"]["completion_tokens"] <= 12


def test_gguf_request_params_override_the_version_defaults(
    gguf_model: PyFuncModel,
) -> None:
    out = chat(gguf_model, MESSAGES, max_tokens=3, temperature=0)
    assert out["usage"]["completion_tokens"] <= 3
    assert out["choices"][0]["finish_reason"] == "length"


def test_gguf_predict_stream_yields_chunks_then_usage(
    gguf_model: PyFuncModel,
) -> None:
    chunks = chat_stream(gguf_model, MESSAGES, temperature=0.0)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip()
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] >= len(chunks) - 1 > 0


def test_gguf_resolves_to_its_artifact_without_loading(smollm2_registry: Registry) -> None:
    resolved = smollm2_registry.resolve("r", "champion")
    assert resolved is not None
    assert (resolved.flavour, resolved.version, resolved.model_uri) == ("gguf", "1", "models:/r/1")
    assert resolved.params["n_ctx"] == 512
    assert resolved.params["temperature"] == 0.7  # a default filled in at registration
    assert resolved.gguf_path is not None
    assert resolved.gguf_path.read_bytes()[:4] == b"GGUF"
    # A local store: the artifact itself, not a copy in the cache.
    assert smollm2_registry.artifact_root is not None
    assert resolved.gguf_path.is_relative_to(smollm2_registry.artifact_root.resolve())
    assert resolved.gguf_path.stat().st_size == smollm2_path().stat().st_size
    assert not smollm2_registry.cache_dir.exists()


def test_registration_writes_nothing_to_the_working_directory(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    registry.register_endpoint("e", base_url="http://127.0.0.1:9/v1", remote_model="m", params={})
    assert list(workdir.iterdir()) == []
    assert mlflow.get_tracking_uri() != registry.tracking_uri  # the global is restored


# -- remote endpoint -------------------------------------------------------------------
class _RecordHeaders:
    """ASGI wrapper that remembers the headers of every HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def fake_engine() -> Iterator[tuple[ServerThread, _RecordHeaders]]:
    app = _RecordHeaders(create_fake_openai_app(FakeSpec(name="engine", mode="echo")))
    with serve(app) as server:
        yield server, app


SECRET = "sk-test-1f8a3c-never-stored"


def test_remote_flavour_calls_the_engine_with_the_key_from_the_environment(
    registry: Registry,
    fake_engine: tuple[ServerThread, _RecordHeaders],
    monkeypatch: pytest.MonkeyPatch,
    uses: Any,
) -> None:
    server, recorder = fake_engine
    monkeypatch.setenv("ENGINE_KEY", SECRET)
    version = registry.register_endpoint(
        "remote",
        base_url=f"{server.url}/v1",
        remote_model="engine-model",
        api_key_env="ENGINE_KEY",
        params={"max_tokens": 50},
        alias="champion",
    )
    uses(registry)
    model = mlflow.pyfunc.load_model("models:/remote@champion")
    out = chat(model, [{"role": "user", "content": "echo me back"}])
    assert out["choices"][0]["message"]["content"] == "echo me back"
    assert out["usage"]["completion_tokens"] == 3
    assert recorder.seen[-1]["authorization"] == f"Bearer {SECRET}"

    chunks = chat_stream(model, [{"role": "user", "content": "a b c"}])
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed.split() == ["a", "b", "c"]
    assert recorder.seen[-1]["authorization"] == f"Bearer {SECRET}"

    resolved = registry.resolve("remote", "champion")
    assert resolved is not None and resolved.version == version
    assert resolved.flavour == "openai"
    assert resolved.params["api_key_env"] == "ENGINE_KEY"
    assert resolved.gguf_path is None


def test_the_api_key_is_stored_nowhere_in_the_registry(
    registry: Registry,
    fake_engine: tuple[ServerThread, _RecordHeaders],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = fake_engine
    monkeypatch.setenv("ENGINE_KEY", SECRET)
    version = registry.register_endpoint(
        "remote",
        base_url=f"{server.url}/v1",
        remote_model="engine-model",
        api_key_env="ENGINE_KEY",
        params={},
    )
    client = registry.client
    mv = client.get_model_version("remote", version)
    assert mv.source is not None
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.source_run_id is not None
    run = client.get_run(logged.source_run_id)
    stored = json.dumps(
        [mv.tags, logged.tags, logged.params, run.data.params, run.data.tags], default=str
    )
    assert "ENGINE_KEY" in stored  # the search does look where the config went
    assert SECRET not in stored
    files = [p for p in (registry.artifact_root or Path("/nonexistent")).rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert (
        SECRET.encode() not in Path(registry.tracking_uri.removeprefix("sqlite:///")).read_bytes()
    )


def test_remote_flavour_refuses_to_load_without_its_key(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, uses: Any
) -> None:
    monkeypatch.delenv("MISSING_KEY", raising=False)
    registry.register_endpoint(
        "remote",
        base_url="http://127.0.0.1:9/v1",
        remote_model="m",
        api_key_env="MISSING_KEY",
        params={},
        alias="champion",
    )
    uses(registry)
    with pytest.raises(Exception, match="MISSING_KEY"):
        mlflow.pyfunc.load_model("models:/remote@champion")


# -- any other chat pyfunc -------------------------------------------------------------
class EchoChain(PythonModel):
    """Stands in for a logged LangChain chain: answers a string."""

    def predict(self, context, model_input, params=None):
        user = [m["content"] for m in model_input["messages"] if m["role"] == "user"]
        return f"echo: {user[-1]}"


def test_any_chat_pyfunc_routes_through_load_chat_pyfunc(
    registry: Registry, tmp_path: Path
) -> None:
    # Logged the way a user would, into an experiment of theirs (kept in tmp_path).
    experiment = registry.client.create_experiment(
        "user-chains", artifact_location=(tmp_path / "user-artifacts").as_uri()
    )
    with mlflow_uris(registry.tracking_uri), mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="echo", python_model=EchoChain(), registered_model_name="chain"
        )
    registry.set_alias("chain", "champion", "1")
    resolved = registry.resolve("chain", "champion")
    assert resolved is not None
    assert (resolved.flavour, resolved.params, resolved.gguf_path) == ("pyfunc", {}, None)

    predict = registry.load_chat_pyfunc(resolved)
    assert predict([{"role": "user", "content": "hi there"}], {"temperature": 0.1}) == (
        "echo: hi there"
    )
    # The same through the function with explicit URIs, as the router's worker calls it.
    direct = load_chat_pyfunc("models:/chain/1", tracking_uri=registry.tracking_uri)
    assert direct([{"role": "user", "content": "again"}], None) == "echo: again"
    assert FLAVOUR_TAG not in registry.client.get_model_version("chain", "1").tags


@pytest.mark.parametrize(
    "output",
    [
        "the answer",
        ["the answer"],
        {"choices": [{"message": {"role": "assistant", "content": "the answer"}}]},
        {"content": "the answer"},
        {"text": "the answer"},
        [{"content": "the answer"}],
    ],
)
def test_answer_text_reads_every_usual_output_shape(output: object) -> None:
    assert answer_text(output) == "the answer"


@pytest.mark.parametrize("output", [42, ["a", "b"], {"answer": "x"}, None])
def test_answer_text_refuses_what_it_cannot_read(output: object) -> None:
    with pytest.raises(ValueError, match="cannot read an answer"):
        answer_text(output)
