"""``Registry``: the one small API over the MLflow Model Registry that the router, the CLI
and the evaluator use.

A route is a registered model; its arms are the versions behind the aliases
``@champion`` and ``@challenger``; ``@previous`` remembers the champion a promotion
replaced. Promotion, rollback and restore are alias moves plus version tags that record
who decided what, when and why.

Concurrency: MLflow has no compare-and-set on aliases, so each transition is ordered so
that every prefix of it leaves a valid route (always a ``@champion``), and a second
process that runs the same transition, before, during or after the first, converges on
the same aliases. Tags are written before the alias moves they explain.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.file_utils import local_file_uri_to_path

from registry.errors import InvalidModel, NotRegistered, RegistryError, RegistryUnavailable
from registry.flavours import (
    FLAVOUR_TAG,
    GGUF_ARTIFACT,
    GGUF_DEFAULTS,
    PARAMS_SIGNATURE,
    ChatPyfunc,
    Flavour,
    GGUFChatModel,
    RemoteChatModel,
    load_chat_pyfunc,
)
from registry.uris import mlflow_uris

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EXPERIMENT_NAME",
    "PREVIOUS",
    "Registry",
    "ResolvedVersion",
    "RouteInfo",
    "Transition",
    "VersionInfo",
    "check_gguf",
]

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
#: The experiment our registrations are logged in; its artifact location is ours to pick.
EXPERIMENT_NAME = "canary-models"
GGUF_MAGIC = b"GGUF"

# Version tags written by transitions.
TAG_STATUS = "canary.status"  # champion | previous | rejected | demoted | retired
TAG_DECISION = "canary.decision_id"
TAG_ACTOR = "canary.actor"
TAG_REASON = "canary.reason"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc")

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ResolvedVersion:
    """What an alias points at, read without loading the model."""

    route: str
    alias: str
    version: str
    flavour: Flavour
    #: The version's ``model_config`` for our flavours, {} for other pyfuncs.
    params: dict[str, Any]
    #: ``models:/<route>/<version>``: pinned, unlike the alias.
    model_uri: str
    #: A local GGUF file (the store's own file, or a copy in the cache for remote stores).
    gguf_path: Path | None = None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a route, for listings."""

    version: str
    aliases: tuple[str, ...]
    flavour: Flavour
    tags: dict[str, str]
    created: datetime


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """A route (registered model) with its aliases and versions, newest first."""

    route: str
    aliases: dict[str, str]
    versions: tuple[VersionInfo, ...]


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of promote / rollback / restore: what changed and what is now in force."""

    route: str
    action: Literal["promote", "rollback", "restore"]
    #: False when there was nothing to do (e.g. the second of two identical calls).
    changed: bool
    #: The version the action was about (the promoted, rejected or restored one).
    version: str | None
    champion: str | None
    challenger: str | None
    previous: str | None
    message: str


@dataclass(frozen=True, slots=True)
class _VersionMeta:
    flavour: Flavour
    params: dict[str, Any]
    model_dir_uri: str
    gguf_relpath: str | None = None


def check_gguf(path: Path) -> Path:
    """``path`` if it is a readable GGUF file (by its 4 magic bytes), else ``InvalidModel``."""
    if not path.exists():
        raise InvalidModel(f"no such file: {path}")
    if not path.is_file():
        raise InvalidModel(f"not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InvalidModel(f"cannot read {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise InvalidModel(f"{path} is not a GGUF file (starts with {magic!r}, not b'GGUF')")
    return path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _requirements(*dists: str) -> list[str]:
    """Pinned requirements for the model's environment, skipping what is not installed."""
    reqs = []
    for dist in ("mlflow", "canary-router", *dists):
        try:
            reqs.append(f"{dist}=={dist_version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


class Registry:
    """Routes, aliases and versions in one MLflow registry (embedded sqlite or a server).

    Thread-safe. Every call goes through ``MlflowClient`` with explicit URIs; only the
    registration itself borrows MLflow's global URIs, inside ``mlflow_uris``.
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        *,
        cache_dir: Path,
        artifact_root: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.cache_dir = cache_dir
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self._meta: dict[tuple[str, str, str], _VersionMeta] = {}
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}

    @classmethod
    def from_env(cls, data_dir: Path) -> Registry:
        """MLflow's convention: ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` when set,
        else the embedded registry ``sqlite:///<data_dir>/mlflow.db`` with artifacts in
        ``<data_dir>/mlartifacts``. Downloads are cached in ``<data_dir>/model-cache``."""
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir / 'mlflow.db'}"
        registry = os.environ.get("MLFLOW_REGISTRY_URI") or None
        # A server picks its own artifact store; a database URI would otherwise put
        # artifacts in ./mlruns of whatever directory the process started in.
        remote = urlparse(tracking).scheme in _REMOTE_SCHEMES
        return cls(
            tracking,
            registry,
            cache_dir=data_dir / "model-cache",
            artifact_root=None if remote else data_dir / "mlartifacts",
        )

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, registry_uri={self.registry_uri!r})"

    # -- errors ------------------------------------------------------------------------
    @contextmanager
    def _calling(self) -> Iterator[None]:
        """Translate MLflow and transport failures into the registry's exception tree."""
        try:
            yield
        except RegistryError:
            raise
        except MlflowException as exc:
            if _unreachable(exc):
                raise RegistryUnavailable(self.registry_uri, _short(exc)) from exc
            raise RegistryError(_short(exc)) from exc
        except (ConnectionError, TimeoutError) as exc:
            raise RegistryUnavailable(self.registry_uri, _short(exc)) from exc
        except Exception as exc:
            # Transport and database-connection errors, without importing their packages.
            kind = type(exc)
            if (
                kind.__module__.split(".")[0] in ("requests", "urllib3")
                or kind.__name__ == "OperationalError"
            ):
                raise RegistryUnavailable(self.registry_uri, _short(exc)) from exc
            raise

    def _route(self, route: str) -> RegisteredModel:
        try:
            return self.client.get_registered_model(route)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                known = ", ".join(self._route_names()) or "none"
                raise NotRegistered(
                    f"no route {route!r} in the registry at {self.registry_uri} "
                    f"(registered: {known})"
                ) from exc
            raise

    def _version(self, route: str, version: str) -> ModelVersion:
        self._route(route)  # an unknown route is reported as such, not as a version
        try:
            return self.client.get_model_version(route, version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                versions = ", ".join(str(v.version) for v in self._versions(route)) or "none"
                raise NotRegistered(
                    f"route {route!r} has no version {version!r} (versions: {versions})"
                ) from exc
            raise

    def _aliases(self, route: str) -> dict[str, str]:
        return {a: str(v) for a, v in self._route(route).aliases.items()}

    def _route_names(self) -> list[str]:
        return [m.name for m in self._registered_models()]

    def _registered_models(self) -> list[RegisteredModel]:
        found: list[RegisteredModel] = []
        token = None
        while True:
            page = self.client.search_registered_models(max_results=100, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _versions(self, route: str) -> list[ModelVersion]:
        escaped = route.replace("'", "\\'")
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.client.search_model_versions(
                f"name='{escaped}'", max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return sorted(found, key=lambda v: int(v.version), reverse=True)

    # -- reading -----------------------------------------------------------------------
    def resolve(self, route: str, alias: str) -> ResolvedVersion | None:
        """The version behind ``models:/<route>@<alias>``, or None when the alias is unset.

        Reads tags and the MLmodel file, never the weights; a GGUF version's file is made
        local (downloaded once into the cache when the store is remote).
        """
        with self._calling():
            try:
                mv = self.client.get_model_version_by_alias(route, alias)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
                self._route(route)  # NotRegistered when it is the route that is missing
                return None
            version = str(mv.version)
            meta = self._version_meta(route, mv)
            gguf = self._gguf_file(route, version, meta) if meta.gguf_relpath else None
        return ResolvedVersion(
            route=route,
            alias=alias,
            version=version,
            flavour=meta.flavour,
            params=dict(meta.params),
            model_uri=f"models:/{route}/{version}",
            gguf_path=gguf,
        )

    def _version_meta(self, route: str, mv: ModelVersion) -> _VersionMeta:
        """Flavour and parameters of a version (immutable, so cached per version source)."""
        key = (route, str(mv.version), mv.source or "")
        with self._lock:
            if key in self._meta:
                return self._meta[key]
        flavour = cast(Flavour, mv.tags.get(FLAVOUR_TAG, "pyfunc"))
        model_dir = self.client.get_model_version_download_uri(route, str(mv.version))
        meta = _VersionMeta(flavour=flavour, params={}, model_dir_uri=model_dir)
        if flavour in ("gguf", "openai"):
            pyfunc_conf = self._mlmodel(route, str(mv.version), model_dir).flavors[
                "python_function"
            ]
            artifact = (pyfunc_conf.get("artifacts") or {}).get(GGUF_ARTIFACT) or {}
            meta = _VersionMeta(
                flavour=flavour,
                params=dict(pyfunc_conf.get("config") or {}),
                model_dir_uri=model_dir,
                gguf_relpath=artifact.get("path") if flavour == "gguf" else None,
            )
        with self._lock:
            self._meta[key] = meta
        return meta

    def _mlmodel(self, route: str, version: str, model_dir: str) -> Model:
        if _is_local(model_dir):
            return Model.load(Path(local_file_uri_to_path(model_dir)) / "MLmodel")
        target = self.cache_dir / route / version
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_dir}/MLmodel",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri,
            )
            return Model.load(local)

    def _gguf_file(self, route: str, version: str, meta: _VersionMeta) -> Path:
        relpath = cast(str, meta.gguf_relpath)
        if _is_local(meta.model_dir_uri):
            return Path(local_file_uri_to_path(meta.model_dir_uri)) / relpath
        target = self.cache_dir / route / version / Path(relpath).name
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Into a private directory, then renamed: a second process (or a crash midway)
        # never sees a half-written file under the final name.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{meta.model_dir_uri}/{relpath}",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri,
            )
            os.replace(local, target)
        return target

    def routes(self) -> list[str]:
        """Routes that can serve: registered models with a ``@champion``."""
        with self._calling():
            return sorted(m.name for m in self._registered_models() if CHAMPION in m.aliases)

    def describe(self) -> list[RouteInfo]:
        """Every registered model with its aliases and versions (for ``canary models``)."""
        with self._calling():
            infos = []
            for model in sorted(self._registered_models(), key=lambda m: m.name):
                aliases = {a: str(v) for a, v in model.aliases.items()}
                by_version: dict[str, list[str]] = {}
                for alias, version in sorted(aliases.items()):
                    by_version.setdefault(version, []).append(alias)
                versions = tuple(
                    VersionInfo(
                        version=str(mv.version),
                        aliases=tuple(by_version.get(str(mv.version), ())),
                        flavour=cast(Flavour, mv.tags.get(FLAVOUR_TAG, "pyfunc")),
                        tags=dict(mv.tags),
                        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    )
                    for mv in self._versions(model.name)
                )
                infos.append(RouteInfo(model.name, aliases, versions))
            return infos

    def is_empty(self) -> bool:
        """True when no model is registered at all."""
        with self._calling():
            return not self.client.search_registered_models(max_results=1)

    def load_chat_pyfunc(self, resolved: ResolvedVersion) -> ChatPyfunc:
        """Load a version as a blocking ``(messages, params) -> text`` callable.

        For any pyfunc flavour; the router uses it for ``flavour == "pyfunc"``. Blocks:
        call it from a worker thread.
        """
        with self._calling():
            return load_chat_pyfunc(
                resolved.model_uri, tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
            )

    # -- registering -------------------------------------------------------------------
    def _experiment_id(self, name: str = EXPERIMENT_NAME) -> str:
        """Our experiment ``name``, created on first use with its artifacts where we want
        them (``artifact_root``, or a folder of it named after any other experiment)."""
        if name in self._experiments:
            return self._experiments[name]
        found = self.client.get_experiment_by_name(name)
        if found is None:
            root = self.artifact_root
            if root is not None and name != EXPERIMENT_NAME:
                root = root / name
            location = root.resolve().as_uri() if root else None
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                # Another process created it between our lookup and our create.
                found = self.client.get_experiment_by_name(name)
                experiment_id = cast(Any, found).experiment_id
        else:
            experiment_id = found.experiment_id
        self._experiments[name] = str(experiment_id)
        return self._experiments[name]

    def _log(
        self,
        route: str,
        python_model: GGUFChatModel | RemoteChatModel,
        *,
        model_config: dict[str, Any],
        tags: dict[str, str],
        requirements: list[str],
        artifacts: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> str:
        note = progress or (lambda _stage: None)
        with self._calling():
            experiment_id = self._experiment_id()
            note("logging model")
            with (
                mlflow_uris(self.tracking_uri, self.registry_uri),
                _quiet_log_model(),
                mlflow.start_run(experiment_id=experiment_id, run_name=f"register {route}"),
            ):
                info = mlflow.pyfunc.log_model(
                    name=route,
                    python_model=python_model,
                    artifacts=artifacts,
                    model_config=model_config,
                    signature=PARAMS_SIGNATURE,
                    pip_requirements=requirements,  # given, so MLflow does not load the model
                    registered_model_name=route,
                    tags=tags,  # land on the logged model and on the new version
                )
        note("registered")
        return str(info.registered_model_version)

    def register_gguf(
        self,
        route: str,
        path: Path,
        *,
        params: dict[str, Any],
        alias: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Register a GGUF file as a new version of ``route``; returns the version.

        ``params`` are the Modelfile-like settings (see ``GGUF_DEFAULTS``); the rest
        take the defaults. ``progress`` is told each stage.
        """
        path = check_gguf(Path(path).expanduser())
        if unknown := sorted(set(params) - set(GGUF_DEFAULTS)):
            raise InvalidModel(f"unknown GGUF parameters {unknown}; known: {list(GGUF_DEFAULTS)}")
        version = self._log(
            route,
            GGUFChatModel(),
            model_config={**GGUF_DEFAULTS, **params},
            tags={FLAVOUR_TAG: "gguf", "canary.gguf_file": path.name},
            requirements=_requirements("llama-cpp-python"),
            artifacts={GGUF_ARTIFACT: str(path)},
            progress=progress,
        )
        if alias:
            self.set_alias(route, alias, version)
        return version

    def register_endpoint(
        self,
        route: str,
        *,
        base_url: str,
        remote_model: str,
        api_key_env: str | None = None,
        params: dict[str, Any],
        alias: str | None = None,
    ) -> str:
        """Register an OpenAI-compatible endpoint as a new version of ``route``.

        ``api_key_env`` names the environment variable holding the key; the key itself is
        read when the model loads and never stored.
        """
        if urlparse(base_url).scheme not in ("http", "https"):
            raise InvalidModel(f"endpoint {base_url!r} is not an http(s) URL")
        if api_key_env is not None and not _ENV_NAME.fullmatch(api_key_env):
            # Refuse what looks like a pasted key rather than write it to the registry.
            raise InvalidModel("--api-key-env takes the NAME of an environment variable")
        config = {
            "base_url": base_url.rstrip("/"),
            "remote_model": remote_model,
            "api_key_env": api_key_env,
            **params,
        }
        version = self._log(
            route,
            RemoteChatModel(),
            model_config=config,
            tags={FLAVOUR_TAG: "openai", "canary.base_url": config["base_url"]},
            requirements=_requirements("httpx"),
        )
        if alias:
            self.set_alias(route, alias, version)
        return version

    # -- aliases and transitions -------------------------------------------------------
    def set_alias(self, route: str, alias: str, version: str) -> None:
        """Point ``models:/<route>@<alias>`` at ``version`` (which must exist)."""
        with self._calling():
            self._version(route, str(version))
            self._set_alias(route, alias, str(version))

    def _write(self, write: Callable[..., None], *args: str) -> None:
        """One tag or alias write, retried when a concurrent writer got there first.

        MLflow's SQL store upserts with SELECT-then-INSERT (``session.merge``): two
        processes writing the same tag or alias at once make one of them fail on the
        unique key. The row exists by then, so the retry updates it.
        """
        for attempt in range(3):
            try:
                write(*args)
                return
            except MlflowException as exc:
                if attempt == 2 or not _lost_insert_race(exc):
                    raise

    def _set_alias(self, route: str, alias: str, version: str) -> None:
        self._write(self.client.set_registered_model_alias, route, alias, version)

    def _tag(self, route: str, version: str, tags: dict[str, str | None]) -> None:
        for key, value in tags.items():
            if value is not None:
                self._write(self.client.set_model_version_tag, route, version, key, value)

    def _drop_alias(self, route: str, alias: str, expected: str) -> bool:
        """Remove ``alias`` if it still points at ``expected`` (not at a newer choice)."""
        if self._aliases(route).get(alias) != expected:
            return False
        self.client.delete_registered_model_alias(route, alias)
        return True

    def _result(
        self,
        route: str,
        action: Literal["promote", "rollback", "restore"],
        changed: bool,
        version: str | None,
        message: str,
    ) -> Transition:
        aliases = self._aliases(route)
        return Transition(
            route=route,
            action=action,
            changed=changed,
            version=version,
            champion=aliases.get(CHAMPION),
            challenger=aliases.get(CHALLENGER),
            previous=aliases.get(PREVIOUS),
            message=message,
        )

    def promote(
        self, route: str, *, actor: str, reason: str, decision_id: str | None = None
    ) -> Transition:
        """``@challenger``'s version becomes ``@champion``; the old champion ``@previous``.

        Order: tags, ``@previous`` (the champion still serves), ``@champion`` (one write, so
        the route is never without one), then ``@challenger`` goes. A process that finds
        champion == challenger sees a promotion midway and only finishes it.
        """
        with self._calling():
            aliases = self._aliases(route)
            champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
            if challenger is None:
                return self._result(route, "promote", False, None, "no @challenger to promote")
            if champion == challenger:
                dropped = self._drop_alias(route, CHALLENGER, challenger)
                return self._result(
                    route, "promote", dropped, challenger, f"version {challenger} is champion"
                )
            stamp: dict[str, str | None] = {
                TAG_DECISION: decision_id,
                TAG_ACTOR: actor,
                TAG_REASON: reason,
            }
            now = _now()
            self._tag(
                route,
                challenger,
                {
                    TAG_STATUS: CHAMPION,
                    "canary.promoted_at": now,
                    "canary.replaced": champion,
                    **stamp,
                },
            )
            if champion is not None:
                old_previous = aliases.get(PREVIOUS)
                if old_previous is not None and old_previous not in (champion, challenger):
                    self._tag(route, old_previous, {TAG_STATUS: "retired"})
                self._tag(route, champion, {TAG_STATUS: PREVIOUS, "canary.demoted_at": now})
                self._set_alias(route, PREVIOUS, champion)
            self._set_alias(route, CHAMPION, challenger)
            self._drop_alias(route, CHALLENGER, challenger)
            return self._result(
                route,
                "promote",
                True,
                challenger,
                f"version {challenger} promoted to @champion"
                + (f"; version {champion} is @previous" if champion else ""),
            )

    def rollback(
        self, route: str, *, actor: str, reason: str, decision_id: str | None = None
    ) -> Transition:
        """Remove ``@challenger`` and tag its version rejected (tags first, then the alias)."""
        with self._calling():
            challenger = self._aliases(route).get(CHALLENGER)
            if challenger is None:
                return self._result(route, "rollback", False, None, "no @challenger to roll back")
            self._tag(
                route,
                challenger,
                {
                    TAG_STATUS: "rejected",
                    "canary.rejected_at": _now(),
                    TAG_DECISION: decision_id,
                    TAG_ACTOR: actor,
                    TAG_REASON: reason,
                },
            )
            dropped = self._drop_alias(route, CHALLENGER, challenger)
            return self._result(
                route, "rollback", dropped, challenger, f"version {challenger} rejected"
            )

    def restore(
        self, route: str, *, actor: str, reason: str, decision_id: str | None = None
    ) -> Transition:
        """``@previous``'s version becomes ``@champion`` again; ``@previous`` is removed.

        The demoted champion is tagged ``demoted``; it does not become ``@previous``, so a
        second restore is a no-op rather than a swap back.
        """
        with self._calling():
            aliases = self._aliases(route)
            champion, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS)
            if previous is None:
                return self._result(route, "restore", False, None, "no @previous to restore")
            if champion == previous:
                dropped = self._drop_alias(route, PREVIOUS, previous)
                return self._result(
                    route, "restore", dropped, previous, f"version {previous} is champion"
                )
            stamp: dict[str, str | None] = {
                TAG_DECISION: decision_id,
                TAG_ACTOR: actor,
                TAG_REASON: reason,
            }
            now = _now()
            self._tag(route, previous, {TAG_STATUS: CHAMPION, "canary.restored_at": now, **stamp})
            if champion is not None:
                self._tag(route, champion, {TAG_STATUS: "demoted", "canary.demoted_at": now})
            self._set_alias(route, CHAMPION, previous)
            self._drop_alias(route, PREVIOUS, previous)
            return self._result(
                route, "restore", True, previous, f"version {previous} restored to @champion"
            )


class _DropMessages(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.needles)


@contextmanager
def _quiet_log_model() -> Iterator[None]:
    """Silence log_model's advice that does not apply to us, and only that.

    Pickling the model is deliberate (the class is importable from this package), and
    the signature declares params on purpose with no input schema: chat messages are a
    nested dict that an input example would only constrain.
    """
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    drop = _DropMessages("serialized using CloudPickle")
    pyfunc_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            yield
    finally:
        pyfunc_logger.removeFilter(drop)


def _lost_insert_race(exc: MlflowException) -> bool:
    message = str(exc)
    return any(
        marker in message
        for marker in ("UNIQUE constraint failed", "IntegrityError", "duplicate key value")
    )


def _unreachable(exc: MlflowException) -> bool:
    """MLflow reports transport failures as generic exceptions; tell them apart here."""
    message = str(exc)
    cause = type(exc.__cause__)
    return (
        exc.error_code in ("TEMPORARILY_UNAVAILABLE", "ENDPOINT_NOT_FOUND")
        or "API request to" in message
        or "OperationalError" in message
        or cause.__module__.split(".")[0] in ("requests", "urllib3")
        or cause.__name__ == "OperationalError"
    )


def _short(exc: BaseException) -> str:
    """One line: the root cause of a long MLflow/requests error chain."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for marker in ("Connection refused", "timed out", "Read timed out", "Name or service"):
        if marker in message:
            return marker.lower()
    return message if len(message) <= 300 else message[:297] + "..."
