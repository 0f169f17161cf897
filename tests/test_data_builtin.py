"""The real built-in datasets (read from FUSETUNE_DATA_DIR) and their verified download (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.data import DataError, DatasetSpec, OuterFold, builtin, download, fixed_split, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def describe_in_subprocess(name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "search.data", "describe", "--data", name],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------- breast-tcga
def test_breast_tcga_matches_the_issue(data_dir):
    d = load_dataset("breast-tcga").describe()
    assert d["samples"] == {"train": 150, "test": 70, "all": 220}
    assert {k: v["dim"] for k, v in d["modalities"].items()} == {"mrna": 200, "mirna": 184, "protein": 142}
    assert d["classes"] == ["Basal", "Her2", "LumA"]
    assert d["class_counts"]["train"] == {"Basal": 45, "Her2": 30, "LumA": 75}
    assert d["class_counts"]["test"] == {"Basal": 21, "Her2": 14, "LumA": 35}
    assert d["modalities"]["protein"]["missing"] == 70
    assert d["modalities"]["protein"]["missing_by_split"] == {"train": 0, "test": 70}
    assert d["modalities"]["mrna"]["missing"] == d["modalities"]["mirna"]["missing"] == 0


def test_breast_tcga_protein_is_masked_not_an_error(data_dir):
    data = load_dataset("breast-tcga")
    test = data.split_part("test")
    protein = test.modalities["protein"]
    assert not protein.mask.any() and np.all(protein.values == 0.0)
    assert data.split_part("train").modalities["protein"].mask.all()


def test_breast_tcga_values_are_the_csv_values(data_dir):
    data = load_dataset("breast-tcga")
    csv = pd.read_csv(data_dir / "breast_tcga" / "mirna_test.csv", index_col="sample")
    test = data.split_part("test")
    assert list(test.ids) == [str(i) for i in csv.index]
    np.testing.assert_allclose(test.modalities["mirna"].values, csv.to_numpy(np.float32))
    assert test.modalities["mirna"].feature_names == list(csv.columns)


# ---------------------------------------------------------------------------- rosmap
def test_rosmap_matches_the_issue(data_dir):
    data = load_dataset("rosmap")
    d = data.describe()
    assert d["samples"] == {"train": 245, "test": 106, "all": 351}
    assert {k: v["dim"] for k, v in d["modalities"].items()} == {"mrna": 200, "meth": 200, "mirna": 200}
    assert d["classes"] == ["NC", "AD"]
    assert d["class_counts"]["train"] == {"NC": 118, "AD": 127}
    assert d["class_counts"]["test"] == {"NC": 51, "AD": 55}
    tr, te = fixed_split(data.split)
    assert len(tr) == 245 and len(te) == 106 and not set(tr) & set(te)
    raw = np.loadtxt(data_dir / "rosmap" / "2_te.csv", delimiter=",", dtype=np.float32)
    np.testing.assert_array_equal(data.modalities["meth"].values[te], raw)


def test_rosmap_imbalanced_variant(data_dir):
    full = load_dataset("rosmap")
    data = load_dataset("rosmap:ratio=5")  # AD subsampled to 1:5 of NC in each part
    counts = {p: data.split_part(p).class_counts().tolist() for p in ("train", "test")}
    assert counts == {"train": [118, 24], "test": [51, 10]}
    # a subset of the real rows, NC complete, values untouched
    index = {i: k for k, i in enumerate(full.ids)}
    rows = np.array([index[i] for i in data.ids])
    np.testing.assert_array_equal(full.modalities["mrna"].values[rows], data.modalities["mrna"].values)
    assert set(full.ids[full.labels == 0]) <= set(data.ids)
    assert np.array_equal(load_dataset("rosmap:ratio=5").ids, data.ids)          # seeded
    assert not np.array_equal(load_dataset("rosmap:ratio=5,seed=1").ids, data.ids)
    assert data.fingerprint() != full.fingerprint()
    nc = load_dataset("rosmap:ratio=5,minority=NC").split_part("train").class_counts().tolist()
    assert nc == [25, 127]


@pytest.mark.parametrize("spec, message", [
    ("rosmap:ratio=0.5", "--data rosmap parameter 'ratio': expected a number >= 1, got '0.5'"),
    ("rosmap:ratio=5,minority=MCI", "--data rosmap parameter 'minority': expected NC or AD, got 'MCI'"),
    ("rosmap:seed=2", "--data rosmap:seed=2: parameters need ratio=R (minority class subsampled to 1:R)"),
    ("rosmap:ratio=5,fold=1", "--data rosmap parameter 'fold': unknown parameter; expected one of minority, ratio, seed"),
])
def test_rosmap_variant_bad_parameters(data_dir, spec, message):
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["breast-tcga", "rosmap"])
def test_fingerprint_is_stable_across_loads_and_processes(data_dir, name):
    first, second = load_dataset(name).fingerprint(), load_dataset(name).fingerprint()
    assert first == second and len(first) == 64
    in_process = describe_in_subprocess(name)["fingerprint"]
    again = describe_in_subprocess(name)["fingerprint"]
    assert in_process == again == first


def test_fingerprint_changes_with_content(data_dir):
    data = load_dataset("rosmap")
    fp = data.fingerprint()
    data.modalities["mrna"].values[0, 0] += 1e-3
    assert data.fingerprint() != fp


def test_builtins_take_no_parameters():
    with pytest.raises(DataError, match="takes no parameters"):
        load_dataset("breast-tcga:n=3")


# ---------------------------------------------------------------------------- the --data spec
@pytest.mark.parametrize("text", [
    "breast-tcga", "rosmap", "rosmap:ratio=5", "rosmap:ratio=5,minority=NC,seed=2", "synth-clinic:n=40,seed=1",
    "breast-tcga@outer=2/5,seed=0", "rosmap:ratio=5@outer=1/3,seed=7", "synth-clinic:n=40@outer=3/3,seed=-1",
    "/data/study", "~/study", "study:v2", "./a@b", "/data/study@outer=1/2,seed=4",
])
def test_spec_round_trips_its_canonical_text(text):
    spec = DatasetSpec.parse(text)
    assert str(spec) == text and DatasetSpec.parse(str(spec)) == spec
    assert hash(spec) == hash(DatasetSpec.parse(text))  # frozen: usable as a key


@pytest.mark.parametrize("text, canonical", [
    ("synth-clinic:n=200, imbalance=2.5 ,seed = 3", "synth-clinic:n=200,imbalance=2.5,seed=3"),  # blanks dropped
    ("synth-clinic:n=40,,seed=1,", "synth-clinic:n=40,seed=1"),                                  # empty items skipped
    ("rosmap:", "rosmap"), ("breast-tcga:", "breast-tcga"),                                      # no options
    ("breast-tcga@outer=2/5", "breast-tcga@outer=2/5,seed=0"),                                   # seed 0 by default
])
def test_spec_canonical_text(text, canonical):
    assert str(DatasetSpec.parse(text)) == canonical
    assert DatasetSpec.parse(canonical) == DatasetSpec.parse(text)


def test_spec_fields_of_each_form():
    assert DatasetSpec.parse("breast-tcga") == DatasetSpec("breast-tcga")
    r = DatasetSpec.parse("rosmap:ratio=5,seed=2")
    assert (r.name, r.options, r.outer, r.folder) == ("rosmap", (("ratio", "5"), ("seed", "2")), None, None)
    assert r.params == {"ratio": "5", "seed": "2"}
    o = DatasetSpec.parse("rosmap:ratio=5,seed=2@outer=2/5,seed=3")
    assert o.outer == OuterFold(2, 5, 3) and o.without_outer() == r.without_outer() == DatasetSpec("rosmap", r.options)
    # a head that names no registered dataset: the whole text is a folder path, colons and all
    for text in ("/data/study", "study:v2", "synth:n=40"):
        f = DatasetSpec.parse(text)
        assert (f.name, f.options, f.folder) == (text, (), Path(text))
    assert DatasetSpec.parse("~/study@outer=1/3").folder == Path.home() / "study"
    # the last @outer= starts the suffix, whatever the folder's name holds before it
    assert DatasetSpec.parse("/d/a@b@outer=1/2").name == "/d/a@b"


@pytest.mark.parametrize("text, short", [
    ("breast-tcga", "breast-tcga"), ("synth-clinic:n=600", "synth-clinic"), ("rosmap:ratio=5", "rosmap"),
    ("breast-tcga@outer=2/5", "breast-tcga-outer2of5"), ("rosmap:ratio=5@outer=1/3,seed=4", "rosmap-outer1of3"),
    ("/data/study", "study"), ("~/my:study/", "my:study"), ("/data/study@outer=3/4", "study-outer3of4"),
])
def test_spec_short_name(text, short):
    assert DatasetSpec.parse(text).short_name == short


def test_spec_with_outer():
    base = DatasetSpec.parse("rosmap:ratio=5")
    assert str(base.with_outer(2, 5, 1)) == "rosmap:ratio=5@outer=2/5,seed=1"
    with pytest.raises(DataError) as err:
        base.with_outer(2, 5, 1).with_outer(1, 2, 0)
    assert str(err.value) == "--data rosmap:ratio=5@outer=2/5,seed=1: already an outer fold; expected a spec without @outer="
    with pytest.raises(DataError, match=r"outer fold 0/5: expected 1 <= I <= N and N >= 2"):
        base.with_outer(0, 5, 0)


OUTER_EXPECTED = "expected SPEC@outer=I/N[,seed=S] with 1 <= I <= N"


@pytest.mark.parametrize("text, message", [
    ("rosmap:ratio", "--data rosmap:ratio: 'ratio': expected key=value"),
    ("synth-clinic:n=40,=3", "--data synth-clinic:n=40,=3: '=3': expected key=value"),
    ("synth-clinic:n=100,n=200", "--data synth-clinic parameter 'n': given twice"),
    ("breast-tcga@outer=2", f"--data breast-tcga@outer=2: {OUTER_EXPECTED}"),
    ("breast-tcga@outer=2/5,seed=x", f"--data breast-tcga@outer=2/5,seed=x: {OUTER_EXPECTED}"),
    ("breast-tcga@outer=2/5,fold=1", f"--data breast-tcga@outer=2/5,fold=1: {OUTER_EXPECTED}"),
    ("@outer=1/2", f"--data @outer=1/2: {OUTER_EXPECTED}"),
    ("breast-tcga@outer=1/2@outer=1/3", f"--data breast-tcga@outer=1/2@outer=1/3: {OUTER_EXPECTED}, given once"),
    ("breast-tcga@outer=6/5", "--data breast-tcga@outer=6/5: outer fold 6/5: expected 1 <= I <= N and N >= 2"),
    ("breast-tcga@outer=0/5", "--data breast-tcga@outer=0/5: outer fold 0/5: expected 1 <= I <= N and N >= 2"),
    ("breast-tcga@outer=1/1", "--data breast-tcga@outer=1/1: outer fold 1/1: expected 1 <= I <= N and N >= 2"),
    ("", "--data: expected a dataset name (NAME[:k=v,...]) or a folder, got nothing"),
])
def test_spec_errors_are_one_line_naming_what_was_expected(text, message):
    with pytest.raises(DataError) as err:
        DatasetSpec.parse(text)
    assert str(err.value) == message
    with pytest.raises(DataError) as err:  # the loader parses the same way
        load_dataset(text)
    assert str(err.value) == message


def test_load_dataset_takes_a_parsed_spec_and_names_an_unknown_one(tmp_path):
    spec = DatasetSpec.parse("synth-clinic:n=40,seed=1")
    assert load_dataset(spec).fingerprint() == load_dataset(str(spec)).fingerprint()
    with pytest.raises(DataError, match=r"^--data synth:n=40: not a built-in dataset \(breast-tcga, rosmap, "
                                        r"synth-clinic\) nor an existing folder$"):
        load_dataset("synth:n=40")


@pytest.mark.filterwarnings("ignore:The specified dataset source can be interpreted in multiple ways")
def test_search_uses_the_one_parser_for_names_and_sources(tmp_path):
    from search.prepare.config import SearchConfig
    from search.prepare.dataset_input import source_of

    (tmp_path / "study").mkdir()
    outer = f"{tmp_path / 'study'}@outer=2/5,seed=0"
    assert SearchConfig(space="baseline", data=outer).data_name == "study-outer2of5"
    assert SearchConfig(space="baseline", data="rosmap:ratio=5@outer=1/3").data_name == "rosmap-outer1of3"
    assert source_of(outer).to_dict()["uri"].rstrip("/").endswith(str(tmp_path / "study"))
    assert '"fusetune.data": "rosmap:ratio=5"' in source_of("rosmap:ratio=5").to_json()


# ---------------------------------------------------------------------------- download (network replaced)
def _serve_from(data_dir: Path, corrupt: bool = False):
    def fake_fetch(url: str) -> bytes:
        folder = "rosmap" if "/MOGONET/" in url else "breast_tcga"
        payload = (data_dir / folder / url.rsplit("/", 1)[1]).read_bytes()
        return payload[:-1] + b"!" if corrupt else payload
    return fake_fetch


def test_download_verifies_and_installs_rosmap(data_dir, tmp_path, monkeypatch):
    reference = builtin.load_rosmap().fingerprint()
    monkeypatch.setattr(download, "fetch", _serve_from(data_dir))
    dest = download.download_builtin("rosmap", tmp_path / "rosmap")
    for remote in download.SOURCES["rosmap"].files:
        assert (dest / remote.name).read_bytes() == (data_dir / "rosmap" / remote.name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["rosmap"]  # no staging folder left behind
    # the loader finds the verified copy in the cache when FUSETUNE_DATA_DIR is unset
    monkeypatch.delenv(builtin.DATA_DIR_ENV)
    monkeypatch.setattr(builtin, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(download, "fetch", lambda url: pytest.fail("cached data must not be downloaded again"))
    assert builtin.load_rosmap().fingerprint() == reference


def test_download_rejects_a_checksum_mismatch(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", _serve_from(data_dir, corrupt=True))
    with pytest.raises(DataError, match="SHA-256 .* does not match the pinned") as err:
        download.download_builtin("rosmap", tmp_path / "rosmap")
    assert "\n" not in str(err.value) and "1_tr.csv" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_no_network_says_which_variable_to_set(tmp_path, monkeypatch):
    def offline(url: str) -> bytes:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(download, "fetch", offline)
    monkeypatch.delenv(builtin.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(builtin, "CACHE_DIR", tmp_path / "cache")
    for name in ("rosmap", "breast-tcga"):
        with pytest.raises(DataError) as err:
            load_dataset(name)
        msg = str(err.value)
        assert "\n" not in msg and "set FUSETUNE_DATA_DIR" in msg and "rosmap/ and breast_tcga/" in msg
    assert not any((tmp_path / "cache").iterdir())


def test_breast_tcga_conversion_is_byte_identical(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("rdata")
    monkeypatch.setattr(download, "fetch", _serve_from(data_dir))
    dest = download.download_builtin("breast_tcga", tmp_path / "breast_tcga")
    expected = sorted(p.name for p in (data_dir / "breast_tcga").iterdir())
    assert sorted(p.name for p in dest.iterdir()) == expected
    for name in expected:
        assert (dest / name).read_bytes() == (data_dir / "breast_tcga" / name).read_bytes(), name


def test_breast_tcga_conversion_without_rdata_says_what_to_install(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", _serve_from(data_dir))
    monkeypatch.setitem(sys.modules, "rdata", None)  # import rdata -> ImportError
    with pytest.raises(DataError, match=r"pip install rdata"):
        download.download_builtin("breast_tcga", tmp_path / "breast_tcga")
    assert list(tmp_path.iterdir()) == []


def test_unknown_download_folder():
    with pytest.raises(DataError, match="no public source"):
        download.download_builtin("mnist", Path("unused"))
