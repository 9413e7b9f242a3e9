import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("fastapi", "sqlalchemy", "sqlmodel", "mlflow", "router", "registry", "ui", "httpx")


def test_experiments_import_no_web_db_or_mlflow_code() -> None:
    modules = "stats rates sequential latency votes srm power policy analysis report"
    code = (
        "import sys\n"
        f"for name in {modules.split()!r}: __import__('experiments.' + name)\n"
        f"print([m for m in {FORBIDDEN!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
