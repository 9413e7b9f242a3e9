"""Where ``Registry.from_env`` points: MLflow's variables first, else the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.store import Registry


def test_embedded_default_lives_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    registry = Registry.from_env(tmp_path / "data")
    db = (tmp_path / "data" / "mlflow.db").resolve()
    assert registry.tracking_uri == registry.registry_uri == f"sqlite:///{db}"
    assert registry.artifact_root == db.parent / "mlartifacts"
    assert registry.cache_dir == db.parent / "model-cache"


def test_mlflow_variables_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry.internal:5000")
    registry = Registry.from_env(tmp_path / "data")
    assert registry.tracking_uri == "http://mlflow.internal:5000"
    assert registry.registry_uri == "http://registry.internal:5000"
    assert registry.artifact_root is None  # the server decides where artifacts go


def test_a_database_uri_still_keeps_artifacts_out_of_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    registry = Registry.from_env(tmp_path / "data")
    assert registry.registry_uri == f"sqlite:///{tmp_path}/elsewhere.db"
    assert registry.artifact_root == (tmp_path / "data" / "mlartifacts").resolve()
