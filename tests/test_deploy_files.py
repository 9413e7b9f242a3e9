"""Static checks of the deployment files: Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine runs where the tests run, so nothing is built or started here. Instead the
files are parsed and held to the contracts the rest of the project relies on: the image
runs the ``canary`` console script that pyproject.toml defines, as a non-root user, with
the settings the router reads; every file it copies exists and is not ignored; and the
compose file wires the router to a healthy Postgres through a psycopg 3 URL.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from router.cli import build_parser
from router.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
PYPROJECT = ROOT / "pyproject.toml"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments, blank lines and ``\\`` continuations handled."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue  # comments (also inside continuations) and blank lines between
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "Dockerfile ends inside a line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM (global ARGs before them dropped)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
    return result


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """``--flag=value`` options, then the remaining words (JSON array form understood)."""
    words = shlex.split(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(words)
    if rest.startswith("["):
        return flags, list(json.loads(rest))
    return flags, words


def env_pairs(args: str) -> dict[str, str]:
    """``ENV a=1 b=2`` (or the legacy ``ENV a 1``) as a mapping."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; ``!`` re-includes; a
    pattern matching a parent directory excludes everything under it."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").lstrip("/")
        globs = [glob, glob.removeprefix("**/")] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatch(c, g) for c in candidates for g in globs):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "Dockerfile missing at the repository root"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile: list[Instruction]) -> list[Instruction]:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "the Dockerfile should be multi-stage (build, runtime)"
    return all_stages[-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def router_service(compose: dict[str, Any]) -> dict[str, Any]:
    service = compose["services"]["router"]
    assert isinstance(service, dict)
    return service


def exposed_ports(stage: list[Instruction]) -> set[str]:
    """Port numbers a stage EXPOSEs (``8000/tcp`` counts as ``8000``)."""
    return {p.split("/")[0] for i in stage if i.keyword == "EXPOSE" for p in i.args.split()}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` in either compose form (mapping or ``KEY=value`` list)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_router_builds_from_repo_root(router_service: dict[str, Any]) -> None:
    build = router_service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert Path(context) == Path(".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).is_file()


def test_compose_router_waits_for_healthy_postgres(compose: dict[str, Any]) -> None:
    depends_on = compose["services"]["router"]["depends_on"]
    assert isinstance(depends_on, dict), "depends_on needs the long form to carry a condition"
    assert depends_on["postgres"]["condition"] == "service_healthy"
    # service_healthy only works when postgres declares a healthcheck.
    postgres = compose["services"]["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_compose_database_url_is_psycopg3_to_the_postgres_service(
    compose: dict[str, Any], router_service: dict[str, Any]
) -> None:
    env = compose_env(router_service)
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    url = make_url(env["DATABASE_URL"])
    pg_env = compose_env(compose["services"]["postgres"])
    assert url.host == "postgres"
    assert url.port == 5432
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )


def test_compose_router_publishes_the_exposed_port_and_persists_data(
    router_service: dict[str, Any], final_stage: list[Instruction]
) -> None:
    container_ports = {str(p).rsplit(":", 1)[-1] for p in router_service["ports"]}
    assert "8000:8000" in [str(p) for p in router_service["ports"]]
    assert container_ports <= exposed_ports(final_stage)
    env = compose_env(router_service)
    mounts = [str(v).split(":")[1] for v in router_service["volumes"]]
    assert env["CANARY_DATA_DIR"] in mounts


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_has_llama_cuda_build_arg(dockerfile: list[Instruction]) -> None:
    args: dict[str, str] = {}
    for ins in dockerfile:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default.strip('"')
    assert args.get("LLAMA_CUDA") == "0", "ARG LLAMA_CUDA should default to 0 (CPU)"
    assert "BASE_IMAGE" in args
    assert dockerfile[[i.keyword for i in dockerfile].index("FROM")].args.startswith(
        "${BASE_IMAGE}"
    ), "the build stage should start FROM the BASE_IMAGE build arg"
    assert "-DGGML_CUDA=on" in DOCKERFILE.read_text()


def test_dockerfile_runs_as_non_root(final_stage: list[Instruction]) -> None:
    users = [i.args.split(":")[0] for i in final_stage if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER, so it runs as root"
    assert users[-1] not in {"root", "0"}


def test_dockerfile_exposes_8000(final_stage: list[Instruction]) -> None:
    assert "8000" in exposed_ports(final_stage)


def test_dockerfile_healthcheck_probes_liveness(final_stage: list[Instruction]) -> None:
    checks = [i for i in final_stage if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    args = checks[0].args
    assert args.upper() != "NONE"
    assert "/health/live" in args
    # python:3.11-slim ships no curl or wget: the probe must use Python.
    assert "python" in args
    assert "curl" not in args and "wget" not in args


def test_dockerfile_cmd_runs_the_canary_console_script(final_stage: list[Instruction]) -> None:
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "canary" in scripts
    cmds = [i for i in final_stage if i.keyword == "CMD"]
    assert cmds, "the runtime stage has no CMD"
    assert cmds[-1].args.startswith("["), "CMD should use the exec (JSON) form"
    argv = json.loads(cmds[-1].args)
    assert argv[0] == "canary"
    # The rest of the command line must be one the CLI accepts.
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"


def test_dockerfile_env_is_read_by_settings(
    final_stage: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    env: dict[str, str] = {}
    for ins in final_stage:
        if ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    assert env["CANARY_DATA_DIR"] == "/data"
    assert env["CANARY_HOST"] == "0.0.0.0"
    volumes = [v for i in final_stage if i.keyword == "VOLUME" for v in shlex.split(i.args)]
    assert "/data" in volumes or '["/data"]' in volumes
    for name, value in env.items():
        if name.startswith("CANARY_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.data_dir == Path("/data")
    assert settings.host == "0.0.0.0"


def test_dockerfile_copy_sources_exist(dockerfile: list[Instruction]) -> None:
    checked = 0
    for ins in dockerfile:
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        flags, words = split_flags(ins.args)
        if "from" in flags:
            continue  # copied from another stage or image, not from the build context
        assert len(words) >= 2, f"line {ins.line}: {ins.keyword} needs a source and a dest"
        for source in words[:-1]:
            if source.startswith(("http://", "https://", "git@")):
                continue
            if any(ch in source for ch in "*?["):
                assert list(ROOT.glob(source)), f"line {ins.line}: {source!r} matches nothing"
            else:
                assert (ROOT / source).exists(), f"line {ins.line}: {source!r} not in the repo"
            checked += 1
    assert checked, "the Dockerfile copies nothing from the build context"


def test_dockerfile_copy_sources_are_not_dockerignored(dockerfile: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    for ignored in (".venv", ".git", "data", "test-artifacts"):
        assert is_dockerignored(ignored, patterns), f".dockerignore should exclude {ignored}"
    assert is_dockerignored("router/__pycache__/app.cpython-311.pyc", patterns)
    for ins in dockerfile:
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        flags, words = split_flags(ins.args)
        if "from" in flags:
            continue
        for source in words[:-1]:
            assert not is_dockerignored(source, patterns), (
                f"line {ins.line}: {source!r} is excluded by .dockerignore"
            )
