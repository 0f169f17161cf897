"""Strict table reading: every problem becomes a one-line :class:`DataError` naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.data.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Features are float32: a finite value beyond this (``1e300``) would become inf."""


def check_finite(values: np.ndarray, where: str | Path, columns: list[str]) -> None:
    """Refuse ``inf``/``-inf`` and values beyond float32's range in a [rows, columns] array of
    floats (NaN, a missing value, is left to the caller), naming the first such cell."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        v = values[r, c]
        problem = "non-finite value" if np.isinf(v) else f"value beyond float32's range (±{FLOAT32_MAX:.3g})"
        raise DataError(where, f"{problem} {v:g} in column {columns[c]!r}, row {r + 1}")


MAX_TABLE_COLUMNS = 100_000
"""Most columns a dataset table may have (the sample id included): wider tables are refused from
their header, before pandas reads them (a 200,000-column header made the load hang)."""
MAX_COLUMN_NAME_CHARS = 1_000
"""Longest column name in a dataset table (a 50 MB name made the load hang)."""

_HEADER_CHUNK = 1 << 16


def check_header(path: Path) -> None:
    """Refuse a table beyond :data:`MAX_TABLE_COLUMNS` columns or with a column name longer than
    :data:`MAX_COLUMN_NAME_CHARS` characters, reading only as much of its header as needed."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - an unreadable file is reported by read_table
            return
        if len(names) > MAX_TABLE_COLUMNS:
            raise DataError(path, f"{len(names)} columns; at most {MAX_TABLE_COLUMNS} are read")
        for i, name in enumerate(names):
            if len(name) > MAX_COLUMN_NAME_CHARS:
                raise DataError(path, f"the name of column {i + 1} is longer than {MAX_COLUMN_NAME_CHARS} characters")
        return
    columns, length, quoted = 1, 0, False
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        while chunk := f.read(_HEADER_CHUNK):
            for ch in chunk:
                if quoted:  # a quoted name: commas and line ends are part of it
                    if ch == '"':
                        quoted = False
                    else:
                        length += 1
                elif ch == '"':
                    quoted = True
                elif ch == ",":
                    columns, length = columns + 1, 0
                    if columns > MAX_TABLE_COLUMNS:
                        raise DataError(path, f"more than {MAX_TABLE_COLUMNS} columns in its header; at most "
                                              f"{MAX_TABLE_COLUMNS} are read")
                    continue
                elif ch in "\r\n":
                    return
                else:
                    length += 1
                if length > MAX_COLUMN_NAME_CHARS:
                    raise DataError(path, f"the name of column {columns} is longer than {MAX_COLUMN_NAME_CHARS} "
                                          "characters")


def not_a_folder(path: Path, what: str = "file") -> None:
    """A path given as a file (a table, an image) must not name a folder."""
    if path.is_dir():
        raise DataError(path, f"is a folder; expected a {what}")


def read_table(path: Path, *, str_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; ``str_columns`` (e.g. the sample id) are read as text, so "007" stays "007"."""
    path = Path(path)
    not_a_folder(path, "table (CSV or Parquet)")
    if not path.is_file():
        raise DataError(path, "file not found")
    check_header(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={c: str for c in str_columns})
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(path, f"cannot be read as a table ({type(exc).__name__}: {first})") from None


def read_numeric_table(path: Path, *, id_column: str | None = None, header: bool = True) -> pd.DataFrame | np.ndarray:
    """A numeric feature table. With ``id_column``: a DataFrame indexed by that column (string ids,
    unique). With ``header=False``: a plain float array (headerless CSV, one sample per row)."""
    path = Path(path)
    if not header:
        not_a_folder(path, "table (CSV)")
        if not path.is_file():
            raise DataError(path, "file not found")
        df = pd.read_csv(path, header=None)
    else:
        df = read_table(path, str_columns=(id_column,) if id_column else ())
    if id_column is not None:
        if id_column not in df.columns:
            raise DataError(path, f"no {id_column!r} column (columns: {', '.join(map(str, df.columns[:5]))}...)")
        if df[id_column].isna().any():
            raise DataError(path, f"empty sample id in row {int(np.flatnonzero(df[id_column].isna())[0]) + 1}")
        ids = df[id_column].astype(str)
        if ids.duplicated().any():
            raise DataError(path, f"duplicate sample id {ids[ids.duplicated()].iloc[0]!r}")
        df = df.drop(columns=[id_column]).set_index(pd.Index(ids, name=id_column))
    if df.shape[1] == 0:
        raise DataError(path, "no feature columns")
    numeric = df.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & df.notna()
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DataError(path, f"non-numeric cell {df.iat[r, c]!r} in column {df.columns[c]!r}, row {r + 1}")
    if numeric.isna().to_numpy().any():
        r, c = np.argwhere(numeric.isna().to_numpy())[0]
        raise DataError(path, f"empty cell in column {df.columns[c]!r}, row {r + 1}")
    check_finite(numeric.to_numpy(np.float64), path, [str(c) for c in df.columns])
    return numeric.to_numpy(np.float32) if not header else numeric.astype(np.float32)
