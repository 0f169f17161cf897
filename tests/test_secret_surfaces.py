"""Secrets on every surface of every subcommand (issue 26 item 7): one check of every option of
every ``fusetune`` subcommand, nothing credentialed on a subprocess's command line, outputs private
to the user, a warning when a UI binds beyond this machine. Nothing here starts Ray or a server."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from search import command
from search.trust.credentials import credentials_in, redact

SECRET = "s3cr3t-9b1c"
CREDENTIALED = {
    "scheme": f"postgresql://bob:{SECRET}@db.example:5432/optuna",
    "no scheme": f"alice:{SECRET}@head.example:6379",
}


def fusetune(argv: list[str]) -> int:
    try:
        return command.main(argv)
    except SystemExit as exc:  # the study commands' parsers exit 2 themselves
        return int(exc.code)


class _Captured(Exception):
    pass


def subcommand_parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's own parser, as its ``main`` builds it (the first one it parses with)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    parsers = {}
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        for name, sub in command.SUBCOMMANDS.items():
            seen.clear()
            with pytest.raises(_Captured):
                sub.run([])
            parsers[name] = seen[0]
    assert argparse.ArgumentParser.parse_known_args is original
    return parsers


def value_options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(subcommand path, option or positional name) for every argument taking a value, subparsers included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from value_options(sub, (*path, name))
        elif action.nargs != 0:  # every value, hidden options included
            yield path, (action.option_strings[-1] if action.option_strings else None)


@pytest.fixture(scope="module")
def every_option():
    mp = pytest.MonkeyPatch()
    try:
        parsers = subcommand_parsers(mp)
    finally:
        mp.undo()
    cases = [(name, path, option) for name, parser in parsers.items() for path, option in value_options(parser)]
    names = {option for _, _, option in cases}
    # the URI-like options the issue names are among them (a renamed option would drop out silently)
    assert {"--tracking-uri", "--storage", "--optuna-storage", "--address", "--model", "--host"} <= names
    return cases


def created(root) -> list[str]:
    return [os.path.join(d, f) for d, ds, fs in os.walk(root) for f in [*ds, *fs]]


@pytest.mark.parametrize("form", sorted(CREDENTIALED))
def test_every_option_of_every_subcommand_refuses_credentials(form, every_option, tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    value = CREDENTIALED[form]
    for name, path, option in every_option:
        argv = [name, *path, *([option, value] if option else [value])]
        rc = fusetune(argv)
        out, err = capsys.readouterr()
        shown = option or "argument"
        assert rc == 2, (argv, out, err)
        assert SECRET not in out + err, (argv, out, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert f"{shown} {redact(value)}: leave the credentials out" in err, (argv, err)
    assert not ray.is_initialized()
    assert not created(tmp_path), created(tmp_path)  # refused before anything was written, secret or not


def test_the_message_points_to_each_clients_own_variables(capsys):
    for argv, where in [(["ui", "--tracking-uri", f"http://alice:{SECRET}@mlflow:5000"], "MLFLOW_TRACKING_PASSWORD"),
                        (["dashboard", "--name", "x", "--optuna-storage", CREDENTIALED["scheme"]], "PGPASSWORD"),
                        (["run", "--space", "baseline", "--address", CREDENTIALED["no scheme"]], "RAY_AUTH_TOKEN"),
                        (["compare", "a", "--storage", f"s3://k:{SECRET}@bucket/r"], "AWS_SECRET_ACCESS_KEY"),
                        (["robustness", "--name", "x", "--storage", f"s3://k:{SECRET}@bucket/r"], "AWS_ACCESS_KEY_ID")]:
        assert fusetune(argv) == 2
        err = capsys.readouterr().err
        assert where in err and SECRET not in err, err


def test_the_options_nested_reads_itself_too(capsys):
    assert fusetune(["nested", "--space", "baseline", "--outer-folds", CREDENTIALED["scheme"]]) == 2
    err = capsys.readouterr().err
    assert "--outer-folds postgresql://bob:***@db.example:5432/optuna: leave the credentials out" in err
    assert SECRET not in err


def test_a_config_file_is_checked_like_the_command_line(tmp_path, capsys):
    config = tmp_path / "search.yaml"
    config.write_text(f"space: baseline\ntracking_uri: http://alice:{SECRET}@mlflow:5000\n")
    assert fusetune(["run", "--config", str(config), "--storage", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri http://alice:***@mlflow:5000: leave the credentials out" in err and SECRET not in err
    assert not (tmp_path / "r").exists()


def test_an_abbreviated_option_is_named_in_full(capsys):
    assert fusetune(["dashboard", "--name", "x", "--optuna", CREDENTIALED["scheme"]]) == 2
    err = capsys.readouterr().err
    assert "--optuna-storage postgresql://bob:***@db.example:5432/optuna" in err and SECRET not in err


@pytest.mark.parametrize("uri,found,shown", [
    (f"alice:{SECRET}@head:6379", "a password", "alice:***@head:6379"),
    (f"alice:{SECRET}@x@head:6379", "a password", "alice:***@head:6379"),  # an @ in the password
    (f"{SECRET}@head:6379", None, f"{SECRET}@head:6379"),  # a bare name before @ is a token only for --address
    ("head:6379", None, "head:6379"),
    ("/data/a:b@c", None, "/data/a:b@c"),                   # a path, not an address
    ("git@github.com:org/repo", None, "git@github.com:org/repo"),
    ('{"a":"x@y"}', None, '{"a":"x@y"}'),                  # a --points JSON value, not an address
    ("[::1]:6379", None, "[::1]:6379"),
])
def test_credentials_without_a_scheme(uri, found, shown):
    assert credentials_in(uri) == found and redact(uri) == shown


def test_a_token_before_at_in_a_bare_address(capsys):
    assert fusetune(["run", "--space", "baseline", "--address", f"{SECRET}@head:6379"]) == 2
    err = capsys.readouterr().err
    assert "--address ***@head:6379: leave the credentials out" in err and SECRET not in err


# --------------------------------------------------------------------------------- the servers
@pytest.fixture
def launched(monkeypatch, tmp_path):
    """``fusetune ui``/``dashboard`` with the server's launch replaced: what it would have run."""
    calls = []
    monkeypatch.setattr(command.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(command.subprocess, "call", lambda cmd, env=None: calls.append((cmd, env)) or 0)
    monkeypatch.chdir(tmp_path)
    return calls


def test_the_ui_store_is_not_on_mlflows_command_line(launched, tmp_path, capsys):
    uri = "postgresql://bob@db.example/mlflow"
    assert command.main(["ui", "--tracking-uri", uri]) == 0
    (cmd, env), = launched
    assert uri not in " ".join(cmd) and env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert cmd[:2] == ["mlflow", "ui"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert command.main(["ui", "--storage", str(tmp_path / "r")]) == 0
    assert launched[1][1]["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"


@pytest.mark.parametrize("sub,store", [("ui", "--tracking-uri"), ("dashboard", "--optuna-storage")])
def test_a_remote_storage_is_not_opened_as_a_local_folder(sub, store, launched, tmp_path, capsys):
    # it made a local folder named after the URI ('s3:/bucket/...'), a secret in it if the URI had one
    assert fusetune([sub, "--storage", "s3://bucket/results", "--name", "x"][:5 if sub == "dashboard" else 3]) == 2
    err = capsys.readouterr().err
    assert err == (f"fusetune {sub}: error: --storage s3://bucket/results: a remote results folder has no local "
                   f"store to open; give {store}\n")
    assert not launched and not created(tmp_path)


@pytest.mark.parametrize("sub", ["ui", "dashboard"])
@pytest.mark.parametrize("host,warned", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                         ("127.0.0.2", False), ("0.0.0.0", True), ("::", True),
                                         ("10.1.2.3", True), ("box.example", True)])
def test_binding_beyond_loopback_warns(sub, host, warned, launched, capsys):
    argv = [sub, "--host", host, *(["--name", "x"] if sub == "dashboard" else [])]
    assert command.main(argv) == 0
    err = capsys.readouterr().err
    (cmd, _), = launched
    assert cmd[cmd.index("--host") + 1] == host
    lines = [line for line in err.splitlines() if "reachable from other machines" in line]
    assert len(lines) == (1 if warned else 0), err
    if warned:
        assert lines[0] == (f"fusetune {sub}: warning: --host {host} makes the UI reachable from other machines, "
                            "with no authentication: anyone who can reach this port reads (and can change) "
                            "the searches")


# --------------------------------------------------------------------------------- private outputs
@pytest.fixture
def umask_kept():
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_entry_points_make_outputs_private(umask_kept, monkeypatch, tmp_path):
    from search.trust.credentials import private_outputs

    monkeypatch.delenv("FUSETUNE_UMASK", raising=False)
    with private_outputs():
        (tmp_path / "search").mkdir()
        (tmp_path / "search" / "result.json").write_text("{}")
    assert _mode(tmp_path / "search") == 0o700 and _mode(tmp_path / "search" / "result.json") == 0o600
    assert os.umask(0o022) == 0o022  # restored afterwards


@pytest.mark.parametrize("value,mask", [("022", 0o022), ("0o027", 0o027), ("nonsense", 0o077), ("1777", 0o077)])
def test_the_umask_can_be_chosen(value, mask, umask_kept, monkeypatch, capsys):
    from search.trust.credentials import private_outputs

    monkeypatch.setenv("FUSETUNE_UMASK", value)
    with private_outputs():
        now = os.umask(0o077)
        os.umask(now)
    assert now == mask
    err = capsys.readouterr().err
    assert ("FUSETUNE_UMASK" in err) == (mask == 0o077), err


def test_a_refused_search_run_leaves_the_driver_umask_private(umask_kept, monkeypatch, tmp_path):
    # the search driver sets it before anything (Ray included) starts: stop it at its first step
    from search import run as run_mod

    monkeypatch.delenv("FUSETUNE_UMASK", raising=False)
    seen = []

    def first_step(given):
        now = os.umask(0o077)
        os.umask(now)
        seen.append(now)
        raise run_mod.UsageError("stop here")

    monkeypatch.setattr(run_mod, "options", first_step)
    assert run_mod.main(["--space", "baseline", "--storage", str(tmp_path / "r")]) == 2
    assert seen == [0o077]


@pytest.mark.parametrize("module", ["nested", "export", "reports", "compare", "robustness", "data", "ui", "dashboard"])
def test_every_writing_command_is_private(module, umask_kept, monkeypatch):
    # (search.run: its execute, above; the servers: the store or study the tool creates)
    import importlib

    main = command.SUBCOMMANDS[module].run if module in ("ui", "dashboard") else \
        importlib.import_module(f"search.{module}").main
    seen = []

    def stop(*args, **kwargs):
        now = os.umask(0o077)
        os.umask(now)
        seen.append(now)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    monkeypatch.delenv("FUSETUNE_UMASK", raising=False)
    with pytest.raises(SystemExit):
        main([])
    assert seen and seen[0] == 0o077, module
