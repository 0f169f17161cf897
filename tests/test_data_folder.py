"""User dataset folders: the documented layout, the manifest, and a one-line error per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from toydata import write_folder, write_table
from trainables.data import DataError, load_dataset
from trainables.data.folder import load_folder
from trainables.data.tables import MAX_COLUMN_NAME_CHARS, MAX_TABLE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"p{i:02d}" for i in range(10)]


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """10 patients: labels with a split, an EHR table (p08/p09 missing), omics as train/test tables
    (p09 missing), reports (p00 missing, p01 empty -> missing), images as PNG/NPY (p00-p03)."""
    rng = np.random.default_rng(0)
    write_folder(tmp_path, IDS, ["benign", "malignant"] * 5, split=["train"] * 7 + ["test"] * 3, tables={
        "ehr.csv": {"sample_id": IDS[:8], "age": np.arange(8) + 40.0, "crp": rng.normal(size=8)},
        "omics_train.csv": {"sample_id": IDS[:7], "g1": np.arange(7.0), "g2": rng.normal(size=7)},
        "omics_test.csv": {"sample_id": IDS[7:9], "g1": [7.0, 8.0], "g2": [0.5, 0.25]},
        "reports.csv": {"sample_id": IDS[1:], "text": [""] + [f"Report {i}. No ulcer." for i in range(2, 10)]},
    })
    (tmp_path / "img").mkdir()
    gray = np.zeros((8, 6), np.uint8)
    gray[2:5, 1:4] = 255
    Image.fromarray(gray).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.stack([gray, gray // 2, gray * 0], axis=2)).save(tmp_path / "img" / "b.png")
    np.save(tmp_path / "img" / "c.npy", np.full((4, 3), 0.5, np.float32))
    np.save(tmp_path / "img" / "d.npy", np.full((8, 6), 200, np.uint8))
    write_table(tmp_path, "images.csv", {"sample_id": IDS[:4], "path": ["img/a.png", "img/b.png", "img/c.npy", "img/d.npy"]})
    return tmp_path


def test_a_user_folder_loads_as_documented(study):
    data = load_dataset(str(study))
    assert data.name == study.name and list(data.ids) == IDS
    assert data.class_names == ["benign", "malignant"] and data.labels.tolist() == [0, 1] * 5
    assert data.split.tolist() == ["train"] * 7 + ["test"] * 3
    assert sorted(data.modalities) == ["ehr", "image", "omics", "report"]
    ehr, omics, report, image = (data.modalities[m] for m in ("ehr", "omics", "report", "image"))
    assert ehr.kind == "vector" and ehr.feature_names == ["age", "crp"]
    assert ehr.mask.tolist() == [True] * 8 + [False] * 2
    np.testing.assert_array_equal(ehr.values[:8, 0], np.arange(8) + 40.0)
    assert np.all(ehr.values[8:] == 0)
    assert omics.mask.tolist() == [True] * 9 + [False]
    np.testing.assert_array_equal(omics.values[:9, 0], np.arange(9.0))
    assert report.kind == "text" and report.mask.tolist() == [False, False] + [True] * 8
    assert report.values[2] == "Report 2. No ulcer." and report.values[0] == ""
    # images: first one is 8x6 grayscale -> [1, 8, 6]; RGB is converted to luma, 4x3 NPY resized
    assert image.kind == "image" and image.values.shape == (10, 1, 8, 6)
    assert image.mask.tolist() == [True] * 4 + [False] * 6
    np.testing.assert_allclose(image.values[0, 0], gray_expected(), atol=1e-6)
    np.testing.assert_allclose(image.values[1, 0, 3, 2], (0.299 * 255 + 0.587 * 127) / 255, atol=1e-5)
    np.testing.assert_allclose(image.values[2], 0.5, atol=1e-6)
    np.testing.assert_allclose(image.values[3], 200 / 255, atol=1e-6)
    assert image.values.min() >= 0 and image.values.max() <= 1


def gray_expected() -> np.ndarray:
    g = np.zeros((8, 6), np.float32)
    g[2:5, 1:4] = 1.0
    return g


def test_manifest_sets_names_classes_size_and_modalities(study):
    (study / "dataset.yaml").write_text(
        "name: my-study\nclasses: [malignant, benign]\nimage_size: [16, 12]\nimage_channels: 3\n"
        "modalities:\n  clinical: ehr.csv\n  omics: {train: omics_train.csv, test: omics_test.csv}\n"
        "  notes: {kind: text, file: reports.csv}\n  scan: {kind: image, file: images.csv, column: path}\n")
    data = load_folder(study)
    assert data.name == "my-study" and data.class_names == ["malignant", "benign"]
    assert data.labels.tolist() == [1, 0] * 5
    assert list(data.modalities) == ["clinical", "omics", "notes", "scan"]
    assert data.modalities["scan"].values.shape == (10, 3, 16, 12)


def test_json_manifest_and_parquet_tables(study):
    pd.read_csv(study / "ehr.csv").to_parquet(study / "ehr.parquet")
    (study / "ehr.csv").unlink()
    (study / "dataset.json").write_text(json.dumps({"name": "pq"}))
    data = load_folder(study)
    assert data.name == "pq" and data.modalities["ehr"].mask.sum() == 8


def test_ids_are_text_and_integer_labels_sort_numerically(tmp_path):
    write_table(tmp_path, "labels.csv", {"sample_id": ["007", "010", "2"], "label": [10, 2, 10]})
    write_table(tmp_path, "x.csv", {"sample_id": ["007", "010", "2"], "f": [1.0, 2.0, 3.0]})
    data = load_folder(tmp_path)
    assert list(data.ids) == ["007", "010", "2"] and data.class_names == ["2", "10"]
    assert data.labels.tolist() == [1, 0, 1] and data.split is None


def test_fingerprint_is_stable(study):
    assert load_folder(study).fingerprint() == load_folder(study).fingerprint()


# ---------------------------------------------------------------------------- bad input
def _edit(file: str, fn):
    def apply(folder: Path) -> None:
        df = pd.read_csv(folder / file, dtype={"sample_id": str})
        fn(df).to_csv(folder / file, index=False)
    return apply


def _set(row: int, col: str, value):
    def fn(df):
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return fn


def _append(**row):
    return lambda df: pd.concat([df, pd.DataFrame([row])], ignore_index=True)


def _write_bytes(name: str, payload: bytes):
    return lambda folder: (folder / name).write_bytes(payload)


def _unlink(name: str):
    return lambda folder: (folder / name).unlink()


def _in_both_halves(folder: Path) -> None:
    _edit("labels.csv", lambda df: df.drop(columns="split"))(folder)  # no split: only the overlap is wrong
    _edit("omics_test.csv", _set(0, "sample_id", "p00"))(folder)


BAD_INPUTS = {
    "non-numeric cell": (_edit("ehr.csv", _set(3, "crp", "high")), "ehr.csv", "non-numeric cell 'high' in column 'crp', row 4"),
    "empty cell": (_edit("ehr.csv", _set(2, "age", None)), "ehr.csv", "empty cell in column 'age', row 3"),
    "duplicate id in a modality": (_edit("ehr.csv", _set(1, "sample_id", "p00")), "ehr.csv", "duplicate sample id 'p00'"),
    "duplicate id in labels": (_edit("labels.csv", _set(1, "sample_id", "p00")), "labels.csv", "duplicate sample id 'p00'"),
    "duplicate id in reports": (_edit("reports.csv", _set(1, "sample_id", "p01")), "reports.csv", "duplicate sample id 'p01'"),
    "sample in train and test tables": (_in_both_halves, "omics_test.csv", "duplicate sample id 'p00': also in omics_train.csv"),
    "label without features": (_edit("labels.csv", _append(sample_id="p99", label="benign", split="test")),
                               "labels.csv", "sample 'p99' has a label but no data in any modality"),
    "features without label": (_edit("ehr.csv", _append(sample_id="zz", age=1.0, crp=2.0)),
                               "ehr.csv", "sample 'zz' has features but no label"),
    "report without label": (_edit("reports.csv", _append(sample_id="zz", text="hello")),
                             "reports.csv", "sample 'zz' has features but no label"),
    "modality with zero samples": (_edit("ehr.csv", lambda df: df.iloc[:0]), "ehr.csv", "modality 'ehr' has no usable samples"),
    "reports all empty": (_edit("reports.csv", lambda df: df.assign(text="")),
                          "reports.csv", "modality 'report' has no usable samples"),
    "single class": (_edit("labels.csv", lambda df: df.assign(label="benign")), "labels.csv", "only one class ('benign')"),
    "empty label": (_edit("labels.csv", _set(4, "label", None)), "labels.csv", "empty label in row 5"),
    "bad split value": (_edit("labels.csv", _set(2, "split", "validation")),
                        "labels.csv", "split must be 'train' or 'test', got 'validation' in row 3"),
    "mismatched train/test columns": (_edit("omics_test.csv", lambda df: df.rename(columns={"g2": "g3"})),
                                      "omics_test.csv",
                                      "feature columns differ from omics_train.csv: column 2 is 'g2' there, 'g3' here"),
    "fewer test columns": (_edit("omics_test.csv", lambda df: df.drop(columns="g2")),
                           "omics_test.csv", "1 feature columns here, 2 there"),
    "test table holds a train sample": (_edit("omics_test.csv", _set(0, "sample_id", "p00")),
                                        "omics_test.csv",
                                        "sample 'p00' is in this test table but labels.csv puts it in 'train'"),
    "unreadable image": (_write_bytes("img/b.png", b"not a png at all"), "b.png", "cannot be read as an image"),
    "image file missing": (_unlink("img/c.npy"), "c.npy", "image file not found"),
    "bad npy values": (lambda f: np.save(f / "img" / "c.npy", np.full((4, 3), 7.0)),
                       "c.npy", "float image values must lie in [0, 1]"),
    "no labels table": (_unlink("labels.csv"), None, "no labels.csv"),
    "no id column": (_edit("ehr.csv", lambda df: df.rename(columns={"sample_id": "id"})), "ehr.csv", "no 'sample_id' column"),
    "table and split tables": (lambda f: (f / "omics.csv").write_text("sample_id,g1\np00,1\n"), "omics.csv", "also split into"),
    "unknown manifest key": (lambda f: (f / "dataset.yaml").write_text("nmae: x\n"), "dataset.yaml", "unknown key 'nmae'"),
    "bad manifest kind": (lambda f: (f / "dataset.yaml").write_text("modalities:\n  x: {kind: video, file: ehr.csv}\n"),
                          "dataset.yaml", "kind must be one of vector, text, image, got 'video'"),
    "manifest names a missing file": (lambda f: (f / "dataset.yaml").write_text("modalities:\n  x: nothere.csv\n"),
                                      "nothere.csv", "file not found"),
    "broken csv": (_write_bytes("ehr.csv", b'sample_id,age\n"p00,1\n'), "ehr.csv", "cannot be read as a table"),
    "200,000 columns": (_write_bytes("ehr.csv", b"sample_id," + b",".join(b"c%d" % i for i in range(200_000)) +
                                     b"\np00" + b",1" * 200_000 + b"\n"),
                        "ehr.csv", f"more than {MAX_TABLE_COLUMNS} columns in its header"),
    "50 MB column name": (_write_bytes("ehr.csv", b"sample_id,age," + b"g" * 50_000_000 + b"\np00,1,2\n"),
                          "ehr.csv", f"the name of column 3 is longer than {MAX_COLUMN_NAME_CHARS} characters"),
    "long quoted name": (_write_bytes("reports.csv", b'sample_id,"te,\nxt' + b"t" * MAX_COLUMN_NAME_CHARS + b'"\np01,x\n'),
                         "reports.csv", f"the name of column 2 is longer than {MAX_COLUMN_NAME_CHARS} characters"),
    "long parquet name": (lambda f: pd.DataFrame({"sample_id": IDS[:8], "a" * 1001: 1.0}).to_parquet(f / "ehr2.parquet"),
                          "ehr2.parquet", f"the name of column 2 is longer than {MAX_COLUMN_NAME_CHARS} characters"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(study, case):
    corrupt, file, phrase = BAD_INPUTS[case]
    corrupt(study)
    with pytest.raises(DataError) as err:
        load_folder(study)
    msg = str(err.value)
    assert "\n" not in msg
    assert phrase in msg, msg
    assert (file or str(study)) in msg, msg


def test_the_header_at_the_limits_passes(tmp_path):
    from trainables.data.tables import check_header

    names = ["sample_id", *(f"c{i}" for i in range(MAX_TABLE_COLUMNS - 2)), '"x,' + "x" * (MAX_COLUMN_NAME_CHARS - 2) + '"']
    (tmp_path / "wide.csv").write_text(",".join(names) + "\np00" + ",1" * (MAX_TABLE_COLUMNS - 1) + "\n")
    check_header(tmp_path / "wide.csv")  # exactly the maximum columns, the last name exactly the longest


def test_cli_reports_bad_folder_in_one_line_with_exit_code_2(study):
    _edit("ehr.csv", _set(3, "crp", "high"))(study)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "search.data", "describe", "--data", str(study)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "ehr.csv" in proc.stderr and "Traceback" not in proc.stderr
