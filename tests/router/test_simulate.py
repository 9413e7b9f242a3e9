"""``canary simulate`` end to end: a promotion and a rollback that really move MLflow aliases."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.store import Registry
from router.cli import main


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command configures logging for its process; later tests get theirs back."""
    root, mlflow_logger = logging.getLogger(), logging.getLogger("mlflow")
    saved = root.handlers[:], root.level, mlflow_logger.level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    mlflow_logger.setLevel(saved[2])


FAST = ["--batch", "100", "--max-units", "3000", "--min-units", "40", "--min-rated", "40"]


def simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """``canary simulate`` with small stage minimums; (exit code, stdout, stderr)."""
    argv = ["simulate", *FAST, "--out", str(tmp_path / "out")]
    argv += ["--data-dir", str(tmp_path / "data"), *args]
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def registry_at(data_dir: Path) -> Registry:
    return Registry(f"sqlite:///{data_dir / 'mlflow.db'}", cache_dir=data_dir / "model-cache")


def report_of(out: str) -> str:
    match = re.search(r"^report: (.+)$", out, re.MULTILINE)
    assert match, out
    path = Path(match.group(1))
    assert path.is_file()
    return path.read_text()


def test_a_better_challenger_is_promoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = simulate(
        tmp_path, capsys, "--champion-thumbs", "0.5", "--challenger-thumbs", "0.8", "--seed", "1"
    )
    assert code == 0, out
    assert "decision: promote" in out
    assert "-> advance" in out  # the first stage (20%) passed before the last promoted
    assert "aliases before: @challenger -> v2, @champion -> v1" in out
    assert "aliases after:  @champion -> v2, @previous -> v1" in out
    route = registry_at(tmp_path / "data").describe()[0]
    assert route.aliases == {"champion": "2", "previous": "1"}
    promoted = next(v for v in route.versions if v.version == "2")
    assert promoted.tags["canary.status"] == "champion"
    assert "thumbs-up rate" in promoted.tags["canary.reason"]
    report = report_of(out)
    assert "promote" in report and "Decision history" in report


def test_a_worse_challenger_is_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = simulate(
        tmp_path,
        capsys,
        "--champion-thumbs",
        "0.7",
        "--challenger-thumbs",
        "0.35",
        "--challenger-errors",
        "0.05",
        "--seed",
        "2",
    )
    assert code == 0, out
    assert "decision: rollback" in out
    # Thumbs 35 points worse, or the error guardrail (5% against 0%): whichever shows first.
    assert "worse" in out or "guardrail failed: error rate" in out
    assert "aliases after:  @champion -> v1" in out
    route = registry_at(tmp_path / "data").describe()[0]
    assert route.aliases == {"champion": "1"}
    rejected = next(v for v in route.versions if v.version == "2")
    assert rejected.tags["canary.status"] == "rejected"
    units = re.search(r"units: (\d+) users \(champion (\d+), challenger (\d+)\)", out)
    assert units and int(units[1]) == int(units[2]) + int(units[3]) > 0
    assert "rollback" in report_of(out)


def test_bad_input_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = simulate(tmp_path, capsys, "--challenger-thumbs", "1.5")
    assert code == 2 and out == ""
    assert "thumbs_up must lie in [0, 1]" in err
    code, out, err = simulate(tmp_path, capsys, "--stages", "50,20")
    assert code == 2 and "stages must increase" in err
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "canary.db").write_text("someone's data")
    code, out, err = simulate(tmp_path, capsys)
    assert code == 2 and "is not an empty directory" in err
    assert not (tmp_path / "out").exists()
