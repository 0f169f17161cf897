"""Credentials never travel inside a URI option: refused up front, redacted wherever a URI is shown.

A password, a token in the user-info part of an ``http(s)`` URL, or a secret query parameter
(``?token=``, ``?X-Amz-Signature=``, ...) in ``--tracking-uri``, ``--address``, ``--storage`` or
``--optuna-storage`` would be saved with the search: the parent run's params, ``search.json``,
Tune's pickled state, stdout. :func:`refuse_credentials` stops such a URI before anything starts,
naming the environment variables the client reads instead; :func:`redact` (``user:***@``) is
applied to every URI the code echoes, as a second line of defence.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from search.errors import UsageError

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

URI_OPTIONS = {"tracking_uri": "--tracking-uri", "address": "--address", "storage": "--storage",
               "optuna_storage": "--optuna-storage"}
"""The :class:`search.config.SearchConfig` fields holding a URI, and their command-line option."""


def _secret_key(name: str) -> bool:
    low = name.lower().replace("-", "_")
    return any(k in low for k in SECRET_QUERY_KEYS)


def credentials_in(uri: str) -> str | None:
    """What secret ``uri`` carries (``"a password"``, ``"a token before @"``, ``"a secret query
    parameter 'token'"``), or None. A user name alone is no secret, except in ``http(s)`` URLs
    where ``https://TOKEN@host`` is the common way to pass a token."""
    if "://" not in uri:
        return None
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


def redact(uri: Any) -> Any:
    """``uri`` with its credentials masked (``user:***@``, ``***@`` for an http token, secret
    query values as ``***``); anything that is not a URI string comes back unchanged."""
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
    found = credentials_in(uri)
    if found:
        raise UsageError(f"{option} {redact(uri)}: leave the credentials out of the URI (it holds {found}, which "
                         f"would be saved with the search); {WHERE_CREDENTIALS_GO[option]}")


def check_options(values: dict[str, Any]) -> None:
    """:func:`refuse_credentials` for every URI option among ``values`` (field name -> value)."""
    for field, option in URI_OPTIONS.items():
        value = values.get(field)
        if isinstance(value, str):
            refuse_credentials(option, value)


def redact_options(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every URI option redacted (for params, ``search.json`` and messages)."""
    return {k: (redact(v) if k in URI_OPTIONS else v) for k, v in values.items()}
