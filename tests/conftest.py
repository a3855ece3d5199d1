"""Fixtures every test shares: fake AWS credentials and loading a function's handler by path."""

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = REPO / "functions"
EVENTS = REPO / "events"
SAMPLES = REPO / "samples"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach AWS: fake credentials, one region, no endpoint left over from a shell."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Sluice")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "sluice")


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py under a unique module name, as Lambda would import `app`.

    Every function's module is called `app`, so they cannot share sys.modules under that name.
    Call it inside a test (after the environment is set): handlers read configuration at import.
    """
    module_name = f"sluice_function_{name}"
    sys.modules.pop(module_name, None)
    spec = importlib.util.spec_from_file_location(module_name, FUNCTIONS / name / "app.py")
    assert spec, f"no handler at functions/{name}/app.py"
    assert spec.loader, f"no loader for functions/{name}/app.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_environ() -> Iterator[None]:
    """Restore os.environ after a test that sets function configuration directly."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
