"""Credentials never travel inside a URI option: refused up front, redacted wherever a URI is shown.

A password, a token in the user-info part of an ``http(s)`` URL, or a secret query parameter
(``?token=``, ``?X-Amz-Signature=``, ...) in ``--tracking-uri``, ``--address``, ``--storage`` or
``--optuna-storage`` would be saved with the search: the parent run's params, ``search.json``,
Tune's pickled state, stdout. :func:`refuse_credentials` stops such a URI before anything starts,
naming the environment variables the client reads instead; :func:`redact` (``user:***@``) is
applied to every URI the code echoes, as a second line of defence.

:class:`CheckedParser`, the parser of every ``fusetune`` subcommand, applies the same check to
every argument of its command line (``--config`` file values included) before parsing it, so no
option, present or future, takes a credential to a message, a file or a subprocess's command line;
``user:pass@host:port`` without a scheme counts too. :class:`private_outputs` gives the files a
command writes the user's permissions only (umask 077, ``FUSETUNE_UMASK`` to choose another).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from search.prepare.errors import UsageError

SECRET_QUERY_KEYS = ("token", "password", "passwd", "pwd", "secret", "signature", "sig", "credential", "auth",
                     "apikey", "api_key", "access_key", "key")
"""Query parameters whose value is a secret (matched case-insensitively, as a part of the name:
``access_token``, ``X-Amz-Signature``, ``X-Amz-Credential``, ``sig`` of an Azure SAS, ...)."""

MASK = "***"

WHERE_CREDENTIALS_GO: dict[str, str] = {
    "--tracking-uri": "MLflow reads them from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
                      "MLFLOW_TRACKING_TOKEN",
    "--address": "Ray reads its cluster token from RAY_AUTH_TOKEN or ~/.ray/auth_token",
    "--storage": "the storage client reads them from its own environment, e.g. AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, or GOOGLE_APPLICATION_CREDENTIALS",
    "--optuna-storage": "the database client reads them from its environment, e.g. PGPASSWORD or ~/.pgpass",
}
"""Per option: where its credentials belong instead (one clause of the error message)."""

ELSEWHERE = ("give them to the client through its own environment variables or configuration files, never "
             "on the command line (which every user of the machine sees in ps)")
"""The clause for any other argument."""

_BARE = re.compile(r"^(?P<user>[\w.~%+-]+)(?::(?P<password>[^\s/\"'{},]*))?@(?P<host>[\w.%:\[\]-]+)(?P<rest>/\S*)?$")
"""``user:password@host[:port][/...]`` without a scheme (a Ray ``--address``, a database host)."""

URI_OPTIONS = {"tracking_uri": "--tracking-uri", "address": "--address", "storage": "--storage",
               "optuna_storage": "--optuna-storage"}
"""The :class:`search.prepare.config.SearchConfig` fields holding a URI, and their command-line option."""


def _secret_key(name: str) -> bool:
    low = name.lower().replace("-", "_")
    return any(k in low for k in SECRET_QUERY_KEYS)


def credentials_in(uri: str, *, bare_token: bool = False) -> str | None:
    """What secret ``uri`` carries (``"a password"``, ``"a token before @"``, ``"a secret query
    parameter 'token'"``), or None. A user name alone is no secret, except in ``http(s)`` URLs
    where ``https://TOKEN@host`` is the common way to pass a token. Without a scheme,
    ``user:pass@host`` holds a password, and ``TOKEN@host`` a token when ``bare_token`` (an
    address, which has no user)."""
    if "://" not in uri:
        bare = _BARE.match(uri)
        if bare and bare["password"]:
            return "a password"
        return "a token before @" if bare and bare_token else None
    try:
        parts = urlsplit(uri)
        password, username = parts.password, parts.username
    except ValueError:  # a malformed port and the like: the option's own check reports it
        return None
    if password:
        return "a password"
    if username and parts.scheme.lower() in ("http", "https", "ray"):
        return "a token before @"
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and _secret_key(key):
            return f"a secret query parameter {key!r}"
    return None


def redact(uri: Any, *, bare_token: bool = False) -> Any:
    """``uri`` with its credentials masked (``user:***@``, ``***@`` for an http token, secret
    query values as ``***``); anything that is not a URI string comes back unchanged."""
    if isinstance(uri, str) and "://" not in uri and credentials_in(uri, bare_token=bare_token):
        bare = _BARE.match(uri)
        user = f"{bare['user']}:{MASK}" if bare["password"] else MASK
        return f"{user}@{bare['host']}{bare['rest'] or ''}"
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        password, username = parts.password, parts.username
    except ValueError:
        return uri
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        if password:
            netloc = f"{username}:{MASK}@{host}"
        elif username and parts.scheme.lower() in ("http", "https", "ray"):
            netloc = f"{MASK}@{host}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(v and _secret_key(k) for k, v in pairs):
            query = urlencode([(k, MASK if v and _secret_key(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing to mask: as given (urlunsplit would drop sqlite:////'s empty host)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def refuse_credentials(option: str, uri: str | None) -> None:
    """One-line :class:`UsageError` if ``uri`` carries a secret (the message shows it redacted)."""
    if not uri:
        return
    bare_token = option == "--address"
    found = credentials_in(uri, bare_token=bare_token)
    if found:
        raise UsageError(f"{option} {redact(uri, bare_token=bare_token)}: leave the credentials out of the URI "
                         f"(it holds {found}, which would be saved with the search); "
                         f"{WHERE_CREDENTIALS_GO.get(option, ELSEWHERE)}")


def check_options(values: dict[str, Any]) -> None:
    """:func:`refuse_credentials` for every URI option among ``values`` (field name -> value)."""
    for field, option in URI_OPTIONS.items():
        value = values.get(field)
        if isinstance(value, str):
            refuse_credentials(option, value)


def redact_options(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every URI option redacted (for params, ``search.json`` and messages)."""
    return {k: (redact(v) if k in URI_OPTIONS else v) for k, v in values.items()}


# ----------------------------------------------------------------------------- every command line
def _option_name(parser: argparse.ArgumentParser, token: str) -> tuple[str, argparse.Action | None]:
    """The option ``token`` stands for, in full when it is an unambiguous abbreviation."""
    actions = parser._option_string_actions
    if token in actions:
        return token, actions[token]
    matches = {id(a): a for s, a in actions.items() if s.startswith(token) and token.startswith("--")}
    if len(matches) == 1:
        action = next(iter(matches.values()))
        return max(action.option_strings, key=len), action
    return token, None


def check_argv(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> None:
    """:func:`refuse_credentials` for every argument in ``tokens`` (an option's value named by the
    option, a positional one as ``argument``), before argparse sees them: its own errors
    (``invalid choice: '...'``) would echo the value."""
    option: tuple[str, argparse.Action | None] | None = None
    for token in tokens:
        if token.startswith("-") and len(token) > 1 and not token[1:2].isdigit():
            name, eq, value = token.partition("=")
            option = _option_name(parser, name)
            if eq:
                refuse_credentials(option[0], value)
            if eq or (option[1] is not None and option[1].nargs == 0):
                option = None
            continue
        refuse_credentials(option[0] if option else "argument", token)
        if option is not None and (option[1] is None or option[1].nargs not in ("+", "*")):
            option = None


class CheckedParser(argparse.ArgumentParser):
    """argparse that refuses credentials in any argument (:func:`check_argv`) before parsing, in
    one line through its own :meth:`error`: the parser of every ``fusetune`` subcommand."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        tokens = sys.argv[1:] if args is None else list(args)
        try:
            check_argv(self, tokens)
        except UsageError as exc:
            self.error(str(exc))
        return super().parse_known_args(tokens, namespace)


# ----------------------------------------------------------------------------- private outputs
UMASK_ENV = "FUSETUNE_UMASK"
PRIVATE_UMASK = 0o077
"""Files a command writes are the user's alone (folders 0700, files 0600) unless ``FUSETUNE_UMASK``
(octal, e.g. ``022``) says otherwise."""


def wanted_umask() -> int:
    raw = os.environ.get(UMASK_ENV, "").strip()
    if not raw:
        return PRIVATE_UMASK
    try:
        mask = int(raw, 8)
        if not 0 <= mask <= 0o777:
            raise ValueError
    except ValueError:
        print(f"fusetune: warning: {UMASK_ENV}={raw!r} is not an octal umask such as 077 or 022; using 077 "
              "(outputs readable by you only)", file=sys.stderr)
        return PRIVATE_UMASK
    return mask


class private_outputs(contextlib.ContextDecorator):
    """The process umask set to :func:`wanted_umask` while a command (or :func:`search.run.execute`)
    runs, and restored after it. Set before Ray starts, it is inherited by the local cluster's
    workers, so trials' checkpoints and results are private too; a cluster started elsewhere
    (``--address``) writes with its own umask."""

    def __init__(self) -> None:
        self._before: list[int] = []

    def __enter__(self) -> private_outputs:
        self._before.append(os.umask(wanted_umask()))
        return self

    def __exit__(self, *exc: object) -> None:
        os.umask(self._before.pop())
