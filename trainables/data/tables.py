"""Strict table reading: every problem becomes a one-line :class:`DataError` naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.data.errors import DataError


def read_table(path: Path, *, str_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; ``str_columns`` (e.g. the sample id) are read as text, so "007" stays "007"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
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
    return numeric.to_numpy(np.float32) if not header else numeric.astype(np.float32)
