"""Tune's state is sealed with a per-user HMAC; ``--resume`` refuses what this user's fusetune did
not write. The session's tiny search (tests/studies.py, run with a secret in its environment) shows
that no file or MLflow run under it holds it."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search import run as run_mod
from search.prepare.errors import UsageError
from search.trust import integrity
from studies import SECRET as STUDY_SECRET

REPO = Path(__file__).resolve().parents[1]
SECRET = "pw-4d1c9e-never-logged"


def _env(key_file: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), FUSETUNE_STATE_KEY_FILE=str(key_file),
               MLFLOW_TRACKING_PASSWORD=SECRET, MLFLOW_TRACKING_TOKEN=SECRET)
    env.pop("RAY_ADDRESS", None)
    return env


SMALL = ["--space", "baseline", "--num-samples", "2", "--epochs", "2", "--folds", "2", "--top-k", "1",
         "--confirm-repeats", "1", "--references", "logreg"]


@pytest.fixture(scope="module")
def sealed_search(tiny_search):
    """The session's tiny search (tests/studies.py), run with a secret in MLflow's password and
    token variables: its storage, the key file that sealed it, its process output and its name."""
    return tiny_search["storage"], tiny_search["key"], tiny_search, tiny_search["name"]


@pytest.fixture
def key_env(monkeypatch, sealed_search):
    monkeypatch.setenv(integrity.KEY_ENV, str(sealed_search[1]))


# --------------------------------------------------------------------------------- the key
def test_the_key_is_created_once_private(tmp_path, monkeypatch):
    monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "cfg" / "state.key"))
    first = integrity.secret_key()
    assert stat.S_IMODE((tmp_path / "cfg" / "state.key").stat().st_mode) == 0o600
    assert integrity.secret_key() == first and len(first) == 64
    (tmp_path / "cfg" / "state.key").chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        integrity.secret_key()


def test_the_key_lives_under_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.delenv(integrity.KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert integrity.key_path() == tmp_path / "fusetune" / "state.key"


def test_a_mac_binds_path_content_and_key():
    m = integrity.mac(b"k" * 64, "tuner.pkl", b"abc")
    assert m != integrity.mac(b"k" * 64, "tuner.pkl", b"abd")
    assert m != integrity.mac(b"k" * 64, "other.pkl", b"abc")
    assert m != integrity.mac(b"j" * 64, "tuner.pkl", b"abc")


def test_seal_history_and_what_is_sealed(tmp_path, monkeypatch):
    monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "key"))
    folder = tmp_path / "exp"
    (folder / "trial_1").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"v0")
    (folder / "search.json").write_text("{}")                  # fusetune's own plain JSON
    (folder / "experiment_state-2026.json").write_text("{}")   # Tune's, pickles inside
    (folder / "trial_1" / "error.pkl").write_bytes(b"e")
    (folder / "trial_1" / "result.json").write_text("{}")
    fs, root = integrity._fs(str(folder))
    assert integrity.state_files(fs, root) == ["experiment_state-2026.json", "trial_1/error.pkl", "tuner.pkl"]
    for i in range(integrity.HISTORY + 2):
        (folder / "tuner.pkl").write_bytes(f"v{i}".encode())
        integrity.seal(str(folder))
    integrity.verify(str(folder))                           # the newest
    (folder / "tuner.pkl").write_bytes(f"v{integrity.HISTORY + 2 - integrity.HISTORY}".encode())
    integrity.verify(str(folder))                           # the oldest kept
    (folder / "tuner.pkl").write_bytes(b"v0")
    with pytest.raises(UsageError, match="tuner.pkl does not match its HMAC"):
        integrity.verify(str(folder))                       # dropped from the history


# --------------------------------------------------------------------------------- a real search
def test_a_finished_search_is_sealed(sealed_search, key_env):
    storage, _, _, name = sealed_search
    folder = storage / name
    integrity.verify(str(folder))
    integrity.verify(str(folder / "confirmation"))
    fs, root = integrity._fs(str(folder))
    sealed = set(integrity.state_files(fs, root))
    assert {"tuner.pkl"} < sealed and any(f.startswith("experiment_state-") for f in sealed)
    assert any(f.startswith("callback-states-") for f in sealed)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['FUSETUNE_TEST_MARKER']}",))


@pytest.mark.parametrize("attack", ["planted tuner.pkl", "edited experiment state", "no seal", "another user's key"])
def test_resume_refuses_state_this_user_did_not_write(attack, sealed_search, tmp_path, monkeypatch, capsys):
    storage, key, _, name = sealed_search
    copy = tmp_path / "copy"
    shutil.copytree(storage, copy)
    folder = copy / name
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("FUSETUNE_TEST_MARKER", str(marker))
    monkeypatch.setenv(integrity.KEY_ENV, str(key))
    if attack == "planted tuner.pkl":
        (folder / "tuner.pkl").write_bytes(pickle.dumps(_Payload()))
        expected = f"{name}/tuner.pkl does not match its HMAC in fusetune.seal"
    elif attack == "edited experiment state":
        (state,) = folder.glob("experiment_state-*.json")
        state.write_bytes(state.read_bytes() + b" ")  # still valid JSON, one byte more
        expected = f"{name}/{state.name} does not match its HMAC"
    elif attack == "no seal":
        (folder / integrity.SEAL_FILE).unlink()
        expected = "has no fusetune.seal"
    else:
        monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "someone-else.key"))
        expected = "does not match its HMAC"
    rc = run_mod.main(["--resume", "--storage", str(copy), "--name", name])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err and "python -m search.trust.integrity trust" in err
    assert not marker.exists()


def test_trust_seals_a_checked_folder(sealed_search, tmp_path, monkeypatch):
    storage, key, _, name = sealed_search
    shutil.copytree(storage / name, tmp_path / name)
    monkeypatch.setenv(integrity.KEY_ENV, str(tmp_path / "new.key"))
    assert integrity.main(["verify", str(tmp_path / name)]) == 2
    assert integrity.main(["trust", str(tmp_path / name)]) == 0
    assert integrity.main(["verify", str(tmp_path / name)]) == 0


def test_no_file_or_run_under_the_search_holds_the_secret(sealed_search):
    from mlflow import MlflowClient

    storage, _, out, _ = sealed_search
    assert STUDY_SECRET not in out["output"] + out["stderr"]
    holding = [p for p in storage.rglob("*") if p.is_file() and STUDY_SECRET.encode() in p.read_bytes()]
    assert not holding
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=500)
    assert len(runs) >= 4  # parent, 2 trials, references/confirmation
    for run in runs:
        assert STUDY_SECRET not in repr(run.data.params) + repr(run.data.tags)


def test_a_driver_killed_mid_search_leaves_sealed_state(tmp_path, data_dir, monkeypatch):
    """SIGKILL while trials run: every state file Tune left has its MAC already."""
    key, storage = tmp_path / "key", tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *SMALL, "--num-samples", "4", "--epochs", "30",
                             "--storage", str(storage), "--name", "k", "--max-concurrent", "1"],
                            cwd=REPO, env=_env(key), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((storage / "k").glob("*/result.json")):
            time.sleep(0.5)
        assert list((storage / "k").glob("*/result.json")), "no trial reported in time"
        time.sleep(1.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    monkeypatch.setenv(integrity.KEY_ENV, str(key))  # the session's own key comes back after the test
    integrity.verify(str(storage / "k"))
