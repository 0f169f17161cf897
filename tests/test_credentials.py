"""Credentials in URI options: refused before anything starts, redacted wherever a URI is shown."""

from __future__ import annotations

import pytest

from search import run as run_mod
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.trust.credentials import credentials_in, redact

SECRET = "s3cr3t-7f2a"


@pytest.mark.parametrize("uri,found", [
    (f"http://alice:{SECRET}@mlflow.example:5000", "a password"),
    (f"https://{SECRET}@mlflow.example", "a token before @"),
    (f"https://mlflow.example/?token={SECRET}", "a secret query parameter 'token'"),
    (f"s3://bucket/runs?X-Amz-Signature={SECRET}", "a secret query parameter 'X-Amz-Signature'"),
    (f"postgresql://bob:{SECRET}@db/optuna", "a password"),
    (f"ray://alice:{SECRET}@head:10001", "a password"),
    ("postgresql://bob@db/optuna", None),             # a user name alone is no secret for a database
    ("http://127.0.0.1:5000", None),
    ("sqlite:////tmp/x/mlflow.db", None),
    ("s3://bucket/runs?region=eu-west-1", None),
    ("host:6379", None),
])
def test_what_counts_as_a_credential(uri, found):
    assert credentials_in(uri) == found


@pytest.mark.parametrize("uri,shown", [
    (f"http://alice:{SECRET}@mlflow.example:5000/x", "http://alice:***@mlflow.example:5000/x"),
    (f"https://{SECRET}@mlflow.example", "https://***@mlflow.example"),
    (f"https://h/?a=1&access_token={SECRET}", "https://h/?a=1&access_token=***"),
    ("postgresql://bob@db/optuna", "postgresql://bob@db/optuna"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    (None, None),
    (3, 3),
])
def test_redaction(uri, shown):
    assert redact(uri) == shown


@pytest.mark.parametrize("field,option,value", [
    ("tracking_uri", "--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:5000"),
    ("tracking_uri", "--tracking-uri", f"https://127.0.0.1:5000/?token={SECRET}"),
    ("address", "--address", f"ray://alice:{SECRET}@127.0.0.1:10001"),
    ("storage", "--storage", f"s3://bucket/x?X-Amz-Credential={SECRET}"),
    ("optuna_storage", "--optuna-storage", f"postgresql://bob:{SECRET}@db/optuna"),
])
def test_every_uri_option_refuses_credentials_naming_the_environment(field, option, value):
    with pytest.raises(UsageError) as err:
        resolve(SearchConfig(space="baseline", **{field: value}))
    message = str(err.value)
    assert message.startswith(f"{option} ") and SECRET not in message and "\n" not in message
    if option == "--tracking-uri":
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN" in message


def test_refused_before_ray_starts_and_nothing_written(tmp_path, capsys):
    import ray

    storage = tmp_path / "results"
    rc = run_mod.main(["--space", "baseline", "--storage", str(storage), "--tracking-uri",
                       f"http://alice:{SECRET}@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and SECRET not in err, err
    assert "MLFLOW_TRACKING_PASSWORD" in err
    assert not ray.is_initialized()
    assert not storage.exists()


def test_a_resume_refuses_them_too(tmp_path, capsys):
    rc = run_mod.main(["--resume", "--storage", str(tmp_path), "--name", "x", "--tracking-uri",
                       f"https://{SECRET}@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert rc == 2 and SECRET not in err
    assert "--tracking-uri https://***@127.0.0.1:5000: leave the credentials out of the URI (it holds a token" in err


@pytest.mark.parametrize("command", ["reports", "export"])
def test_the_other_commands_refuse_them_too(command, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"search.{command}").main
    args = {"reports": ["--name", "x", "--storage", str(tmp_path)],
            "export": ["--model", "m", "--dest", str(tmp_path / "out")]}[command]
    with pytest.raises(SystemExit) as exit_:  # refused by the parser itself, like any usage error of theirs
        main([*args, "--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:5000"])
    rc, err = exit_.value.code, capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and SECRET not in err, err
    assert "--tracking-uri http://alice:***@127.0.0.1:5000: leave the credentials out of the URI" in err


def test_the_tracking_check_itself_refuses_them():
    from search.tracking.store import check_tracking_uri

    with pytest.raises(UsageError, match=r"alice:\*\*\*@.*MLFLOW_TRACKING_PASSWORD"):
        check_tracking_uri(f"http://alice:{SECRET}@127.0.0.1:9")


def test_params_and_the_saved_options_are_redacted():
    # defence in depth: even a config built around the checks never shows a secret
    cfg = SearchConfig(space="baseline", tracking_uri=f"http://alice:{SECRET}@h:5000",
                       optuna_storage=f"postgresql://bob:{SECRET}@db/o")
    assert SECRET not in repr(cfg.as_params()) and SECRET not in repr(cfg.as_saved())
    assert cfg.as_params()["tracking_uri"] == "http://alice:***@h:5000"


# --------------------------------------------------------------------------------- paths
def test_a_sqlite_uri_naming_a_folder_is_refused_at_once(tmp_path, capsys):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    rc = run_mod.main(["--space", "baseline", "--storage", str(tmp_path / "r"), "--tracking-uri", f"sqlite:///{folder}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"--tracking-uri sqlite:///{folder}: {folder} is a folder; name the database file" in err


def test_an_unwritable_storage_is_reported_as_storage(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = run_mod.main(["--space", "baseline", "--storage", str(blocker / "results")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"--storage {blocker / 'results'}: cannot write there" in err, err
