import os
import tempfile
from pathlib import Path

import pytest

from studies import tiny_search  # noqa: F401 - the session's shared small search, a fixture

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "FUSETUNE_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["FUSETUNE_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the per-user key that seals Tune's state (search.trust.integrity): the tests' own, not ~/.config's
os.environ.setdefault("FUSETUNE_STATE_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="fusetune-key-"), "state.key"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("FUSETUNE_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.fail("FUSETUNE_DATA_DIR must point at the shared data folder (../shared/data)")
    return Path(d)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts), shared by the session."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def pytest_collection_modifyitems(session, config, items):
    """The test modules that read a background search (tests/background.py) run last, so that
    their searches run beside the other modules' tests, not before them."""
    import background

    items[:] = background.in_session_order(items)


@pytest.fixture(scope="session", autouse=True)
def background_searches(request, tmp_path_factory):
    """Start the searches that the selected tests' fixtures read (tests/background.py) now, beside the tests."""
    import background

    background.start_for(request.session.items, tmp_path_factory)
    yield
    background.shutdown()
