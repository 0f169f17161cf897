"""Values a trial could not use never get past the loader: inf, beyond float32, folders as files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toydata import write_folder, write_table
from trainables.data import DataError, load_dataset

REPO = Path(__file__).resolve().parents[1]
IDS = [f"p{i:02d}" for i in range(8)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path, IDS, ["a", "b"] * 4,
                        tables={"ehr.csv": {"sample_id": IDS, "age": np.arange(8) + 40.0, "crp": np.linspace(0, 1, 8)}})


def _set_cell(path: Path, row: int, column: str, text: str) -> None:
    frame = pd.read_csv(path, dtype=str)
    frame.loc[row, column] = text
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("text,problem", [
    ("inf", "non-finite value inf"),
    ("-inf", "non-finite value -inf"),
    ("1e300", "value beyond float32's range (±3.4e+38) 1e+300"),
    ("-4e38", "value beyond float32's range (±3.4e+38) -4e+38"),
])
def test_non_finite_or_out_of_range_cells_are_refused(folder, text, problem):
    _set_cell(folder / "ehr.csv", 5, "crp", text)
    with pytest.raises(DataError) as err:
        load_dataset(str(folder))
    assert str(err.value) == f"{folder / 'ehr.csv'}: {problem} in column 'crp', row 6"


def test_float32_limits_are_accepted(folder):
    _set_cell(folder / "ehr.csv", 1, "age", "3.4e38")
    data = load_dataset(str(folder))
    assert np.isfinite(data.modalities["ehr"].values).all()


def test_describe_exits_non_zero_on_an_inf(folder):
    _set_cell(folder / "ehr.csv", 0, "age", "inf")
    out = subprocess.run([sys.executable, "-m", "search.data", "describe", "--data", str(folder)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].endswith("non-finite value inf in column 'age', row 1")


def test_a_modality_table_that_is_a_folder_is_refused(folder):
    (folder / "omics.csv").mkdir()
    with pytest.raises(DataError, match=r"omics.csv: is a folder; expected a table"):
        load_dataset(str(folder))


def test_a_manifest_file_that_is_a_folder_is_refused(folder):
    (folder / "tables").mkdir()
    (folder / "dataset.yaml").write_text("modalities:\n  ehr: ehr.csv\n  omics: tables\n")
    with pytest.raises(DataError, match=r"tables: is a folder; expected a table"):
        load_dataset(str(folder))


def test_an_image_path_that_is_a_folder_is_refused(folder):
    (folder / "img").mkdir()
    write_table(folder, "images.csv", {"sample_id": IDS[:1], "path": ["img"]})
    with pytest.raises(DataError, match=r"img \(listed in .*images.csv.*\): is a folder; expected an image file"):
        load_dataset(str(folder))
