"""Chat models as MLflow pyfunc models, usable with nothing but MLflow.

``mlflow.pyfunc.load_model(uri).predict({"messages": [...]}, params={...})`` answers an
OpenAI ``chat.completion`` dict and ``predict_stream`` yields ``chat.completion.chunk``
dicts, for both of our flavours:

- ``GGUFChatModel``: a GGUF file (artifact ``gguf``) run in-process by llama.cpp, with the
  Modelfile-like parameters in ``model_config``.
- ``RemoteChatModel``: an OpenAI-compatible engine (vLLM, llama-server, Ollama) at
  ``model_config["base_url"]``. Only the *name* of the API key's environment variable is
  stored; the key is read when the model loads.

The router runs these natively (llama.cpp in its own worker, pooled async HTTP) and uses
``load_chat_pyfunc`` only for other chat pyfuncs, e.g. a logged LangChain chain.

Every version we register carries the version tag ``canary.flavour`` ("gguf" or
"openai"); a version without it is a plain pyfunc ("pyfunc").
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import mlflow
from httpx_sse import connect_sse
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel, PythonModel, PythonModelContext
from mlflow.types.schema import ParamSchema, ParamSpec

from registry.errors import InvalidModel
from registry.uris import mlflow_uris

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "FLAVOUR_TAG",
    "GGUF_ARTIFACT",
    "GGUF_DEFAULTS",
    "PARAMS_SIGNATURE",
    "ChatCallable",
    "ChatPyfunc",
    "Flavour",
    "GGUFChatModel",
    "RemoteChatModel",
    "answer_text",
    "load_chat_pyfunc",
]

Flavour = Literal["gguf", "openai", "pyfunc"]
FLAVOUR_TAG = "canary.flavour"
GGUF_ARTIFACT = "gguf"

#: What a GGUF version gets for every parameter its registration leaves out. Mirrors
#: ``router.backends.llama_cpp.LlamaCppSpec`` so a registered model behaves like a
#: configured one; n_threads None means every core.
GGUF_DEFAULTS: dict[str, Any] = {
    "chat_format": None,
    "system_prompt": None,
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
    "n_ctx": 2048,
    "n_threads": None,
    "n_gpu_layers": 0,
    "stop": [],
    "repeat_penalty": 1.0,
    "logits_all": False,
}

#: Request-time parameters. MLflow drops ``params=`` that the signature does not declare,
#: so they are declared here; None (or []) means "the version's own default".
PARAMS_SIGNATURE = ModelSignature(
    params=ParamSchema(
        [
            ParamSpec("temperature", "double", None),
            ParamSpec("top_p", "double", None),
            ParamSpec("max_tokens", "long", None),
            ParamSpec("seed", "long", None),
            ParamSpec("stop", "string", [], shape=(-1,)),
        ]
    )
)


# -- shared request handling -------------------------------------------------------------
def _messages(model_input: Any) -> list[dict[str, str]]:
    """The chat messages in a pyfunc input: ``{"messages": [...]}``, possibly wrapped."""
    if isinstance(model_input, list) and len(model_input) == 1:
        model_input = model_input[0]  # MLflow wraps a single request in a list at times
    if hasattr(model_input, "to_dict") and not isinstance(model_input, dict):
        model_input = model_input.to_dict(orient="records")[0]  # DataFrame from serving
    if not isinstance(model_input, dict) or not isinstance(model_input.get("messages"), list):
        raise ValueError('chat models take {"messages": [{"role": ..., "content": ...}, ...]}')
    return [dict(m) for m in model_input["messages"]]


def _sampling(config: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Request params over the version's defaults; stop sequences add up (Modelfile rules)."""
    params = {k: v for k, v in (params or {}).items() if v is not None}
    out = {k: params.get(k, config.get(k)) for k in ("temperature", "top_p", "max_tokens")}
    out["stop"] = [*(config.get("stop") or []), *(params.get("stop") or [])]
    if "seed" in params:
        out["seed"] = int(params["seed"])
    return {k: v for k, v in out.items() if v is not None}


def _with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _completion(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunk(
    chunk_id: str,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": text} if text else {},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


# -- GGUF through llama.cpp --------------------------------------------------------------
class GGUFChatModel(PythonModel):
    """A GGUF chat model run by llama.cpp; ``model_config`` holds its Modelfile parameters.

    ``Llama`` is not thread-safe, so predictions on one loaded model take turns.
    """

    # MLflow wraps a type-annotated ``predict`` to validate input against the hints and
    # warns when there are none. Our input is a dict its type hints cannot describe, so
    # ``model_input`` stays unannotated and the wrapping is switched off (MLflow's own
    # switch, used by its ChatModel).
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self._llm: Llama | None = None
        self._config: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Logged before load_context: only the class is pickled, never a model or a lock.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def load_context(self, context: PythonModelContext) -> None:
        """Load the GGUF artifact into llama.cpp with the version's parameters."""
        from llama_cpp import Llama  # heavy import, only when a GGUF model loads

        self._config = {**GGUF_DEFAULTS, **(context.model_config or {})}
        cfg = self._config
        self._llm = Llama(
            model_path=context.artifacts[GGUF_ARTIFACT],
            n_ctx=int(cfg["n_ctx"]),
            n_threads=cfg["n_threads"] or os.cpu_count() or 1,
            n_gpu_layers=int(cfg["n_gpu_layers"]),
            chat_format=cfg["chat_format"],
            logits_all=bool(cfg.get("logits_all")),
            verbose=False,
        )

    def _request(self, model_input: Any, params: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self._config
        return {
            "messages": _with_system(_messages(model_input), cfg.get("system_prompt")),
            "repeat_penalty": cfg["repeat_penalty"],
            **_sampling(cfg, params),
        }

    @property
    def llm(self) -> Llama:
        if self._llm is None:
            raise RuntimeError("GGUFChatModel is not loaded: use mlflow.pyfunc.load_model")
        return self._llm

    def predict(
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One whole ``chat.completion`` for ``{"messages": [...]}``."""
        request = self._request(model_input, params)
        with self._lock:
            result = cast(dict[str, Any], self.llm.create_chat_completion(**request))
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return _completion(
            os.path.basename(self.llm.model_path),
            choice["message"].get("content") or "",
            choice.get("finish_reason") or "stop",
            usage.get("prompt_tokens", 0),
            usage.get("completion_tokens", 0),
        )

    def predict_stream(
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts; the last carries finish_reason and usage."""
        request = self._request(model_input, params)
        llm = self.llm
        name, chunk_id = os.path.basename(llm.model_path), f"chatcmpl-{uuid.uuid4().hex}"
        with self._lock:
            stream = cast(Iterator[Any], llm.create_chat_completion(**request, stream=True))
            prompt_tokens, finish = None, "stop"
            try:
                for piece in stream:
                    if prompt_tokens is None:
                        # The first chunk follows prompt evaluation: the context is the prompt.
                        prompt_tokens = llm.n_tokens
                    choice = piece["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    if text := choice["delta"].get("content"):
                        yield _chunk(chunk_id, name, text)
            finally:
                stream.close()  # type: ignore[attr-defined]
            prompt_tokens = prompt_tokens or llm.n_tokens
            # Each sampled token is evaluated except the last when the length ran out.
            completion = llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        yield _chunk(chunk_id, name, None, finish, usage)


# -- remote OpenAI-compatible engine -----------------------------------------------------
class RemoteChatModel(PythonModel):
    """An OpenAI-compatible ``/chat/completions`` endpoint called with pooled sync httpx.

    ``model_config``: base_url, remote_model, api_key_env (a variable *name*), timeout_s
    and default sampling (system_prompt, temperature, top_p, max_tokens, stop).
    """

    _skip_type_hint_validation = True  # see GGUFChatModel

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._config: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def load_context(self, context: PythonModelContext) -> None:
        """Read the API key from the environment and open the connection pool."""
        self._config = dict(context.model_config or {})
        headers = {"content-type": "application/json"}
        if env := self._config.get("api_key_env"):
            key = os.environ.get(env)
            if not key:
                raise InvalidModel(f"environment variable {env} (the API key) is not set")
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=str(self._config["base_url"]).rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(float(self._config.get("timeout_s") or 120), connect=5.0),
        )

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("RemoteChatModel is not loaded: use mlflow.pyfunc.load_model")
        return self._client

    def _body(self, model_input: Any, params: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self._config
        body = {
            "model": cfg["remote_model"],
            "messages": _with_system(_messages(model_input), cfg.get("system_prompt")),
            **_sampling(cfg, params),
        }
        if not body.get("stop"):
            body.pop("stop", None)
        return body

    def predict(
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The engine's ``chat.completion``, as it sent it."""
        response = self.client.post("/chat/completions", json=self._body(model_input, params))
        response.raise_for_status()
        return cast(dict[str, Any], response.json())

    def predict_stream(
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The engine's server-sent ``chat.completion.chunk`` events, decoded; an error
        event from the engine (mid-stream) raises ``RuntimeError`` with its message."""
        import json

        body = {
            **self._body(model_input, params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with connect_sse(self.client, "POST", "/chat/completions", json=body) as events:
            events.response.raise_for_status()
            for event in events.iter_sse():
                if event.data == "[DONE]":
                    break
                if not event.data:
                    continue
                chunk = json.loads(event.data)
                if event.event == "error" or (isinstance(chunk, dict) and chunk.get("error")):
                    error = chunk.get("error", chunk) if isinstance(chunk, dict) else chunk
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise RuntimeError(f"the engine failed mid-stream: {message}")
                yield chunk


# -- any other chat pyfunc ---------------------------------------------------------------
def answer_text(output: Any) -> str:
    """The answer in a chat pyfunc's output.

    Accepts a str, a one-element list (or array) of one of these, an OpenAI
    ``chat.completion`` dict, or a dict with ``content`` or ``text``.
    """
    if isinstance(output, str):
        return output
    if hasattr(output, "tolist") and not isinstance(output, dict):
        output = output.tolist()  # numpy array or pandas Series
    if isinstance(output, list | tuple) and len(output) == 1:
        return answer_text(output[0])
    if isinstance(output, dict):
        if choices := output.get("choices"):
            first = choices[0]
            message = first.get("message") or first.get("delta") or {}
            if isinstance(message.get("content"), str):
                return cast(str, message["content"])
            if isinstance(first.get("text"), str):
                return cast(str, first["text"])
        for key in ("content", "text"):
            if isinstance(output.get(key), str):
                return cast(str, output[key])
    raise ValueError(f"cannot read an answer from the pyfunc's output: {str(output)[:200]!r}")


class ChatPyfunc:
    """A loaded chat pyfunc as a blocking callable ``(messages, params) -> answer text``.

    Meant for a worker thread (``asyncio.to_thread``): it blocks, and an arbitrary pyfunc
    is not promised to be thread-safe, so calls on one instance take turns.
    """

    def __init__(self, model: PyFuncModel, model_uri: str) -> None:
        self.model = model
        self.model_uri = model_uri
        # Params the signature does not declare would be dropped with a warning each call.
        schema = model.metadata.get_params_schema()
        self.param_names = {p.name for p in schema.params} if schema else set()
        self._lock = threading.Lock()

    def __call__(self, messages: list[dict[str, str]], params: dict[str, Any] | None = None) -> str:
        accepted = {k: v for k, v in (params or {}).items() if k in self.param_names}
        with self._lock:
            output = self.model.predict({"messages": messages}, params=accepted or None)
        return answer_text(output)


ChatCallable = Callable[[list[dict[str, str]], dict[str, Any] | None], str]


def load_chat_pyfunc(
    model_uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None
) -> ChatPyfunc:
    """Load any MLflow pyfunc that takes ``{"messages": [...]}`` as a ``ChatPyfunc``.

    ``models:/`` URIs resolve against ``tracking_uri``/``registry_uri`` when given (else
    MLflow's own settings). Loading blocks too: call it from a worker thread.
    """
    if tracking_uri is None:
        model = mlflow.pyfunc.load_model(model_uri)
    else:
        with mlflow_uris(tracking_uri, registry_uri):
            model = mlflow.pyfunc.load_model(model_uri)
    return ChatPyfunc(model, model_uri)
