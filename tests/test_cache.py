"""Feature cache: round trip through memory maps, content keys, atomic publication."""

import os
import time

import numpy as np
import pytest

from trainables.encoders import cache as cache_mod
from trainables.encoders.cache import (
    MARKER,
    FeatureCache,
    default_cache_dir,
    key_digest,
)


def _arrays():
    return {"values": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "token_mask": np.array([[1, 0, 1], [0, 1, 1]], bool)}


def test_round_trip_is_memory_mapped_copy_on_write(tmp_path):
    cache = FeatureCache(tmp_path)
    key = key_digest({"x": 1})
    assert cache.load(key) is None and not cache.contains(key)
    cache.store(key, _arrays(), {"x": 1})
    got = cache.load(key)
    assert set(got) == {"values", "token_mask"}
    assert isinstance(got["values"], np.memmap) and got["values"].mode == "c"
    np.testing.assert_array_equal(got["values"], _arrays()["values"])
    got["values"][0] = -1.0  # a trial writing into its arrays never alters the entry
    np.testing.assert_array_equal(cache.load(key)["values"], _arrays()["values"])
    np.testing.assert_array_equal(got["token_mask"], _arrays()["token_mask"])
    assert cache.size(key) > _arrays()["values"].nbytes
    assert cache.describe(key)["arrays"]["values"]["shape"] == [2, 3, 4]
    assert (cache.path(key) / "key.json").is_file()


def test_key_is_canonical_and_content_sensitive():
    assert key_digest({"a": 1, "b": [1, 2]}) == key_digest({"b": [1, 2], "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2})
    assert key_digest({"encoder": {"max_length": 64}}) != key_digest({"encoder": {"max_length": 65}})


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSETUNE_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert FeatureCache().root == tmp_path / "env-cache"
    monkeypatch.delenv("FUSETUNE_CACHE_DIR")
    assert str(default_cache_dir()).endswith(os.path.join(".cache", "fusetune", "features"))


def test_crash_mid_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = key_digest({"crash": True})
    real_save = np.save
    calls = {"n": 0}

    def save_then_die(f, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the first array is already on disk
            raise KeyboardInterrupt("killed")
        real_save(f, arr, **kw)

    monkeypatch.setattr(cache_mod.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cache.store(key, _arrays())
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    assert calls["n"] == 2
    assert cache.load(key) is None and not cache.path(key).exists()
    assert list(cache.path(key).parent.iterdir()) == []  # the temp folder was removed too
    cache.store(key, _arrays())
    assert cache.load(key) is not None


def test_killed_process_leftovers_are_never_trusted(tmp_path):
    cache = FeatureCache(tmp_path)
    key = key_digest({"killed": True})
    parent = cache.path(key).parent
    parent.mkdir(parents=True)
    # a SIGKILL during write leaves a temp folder (no cleanup ran) ...
    tmp = parent / f".tmp-{key}-999-dead"
    tmp.mkdir()
    np.save(tmp / "values.npy", _arrays()["values"])
    # ... and an entry copied without its marker or with a truncated array is not usable either
    final = cache.path(key)
    final.mkdir()
    np.save(final / "values.npy", _arrays()["values"])
    assert cache.load(key) is None
    (final / "manifest.json").write_text('{"arrays": {"values": {"shape": [2, 3, 4], "dtype": "<f4", "bytes": 999999}}}')
    (final / MARKER).write_text(key)
    assert cache.load(key) is None  # size mismatch with the manifest
    # a later writer replaces the broken entry and removes stale temp folders
    old = time.time() - cache_mod.STALE_TMP_SECONDS - 10
    os.utime(tmp, (old, old))
    cache.store(key, _arrays())
    assert cache.load(key) is not None
    assert not tmp.exists()


def test_losing_a_publication_race_keeps_the_winner(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = key_digest({"race": True})
    winner = {"values": np.ones((2, 2), np.float32)}
    real_rename = os.rename

    def rename_after_rival(src, dst):
        monkeypatch.setattr(cache_mod.os, "rename", real_rename)
        FeatureCache(tmp_path).store(key, winner)  # a rival process publishes first
        real_rename(src, dst)  # fails: the destination is a non-empty folder

    monkeypatch.setattr(cache_mod.os, "rename", rename_after_rival)
    cache.store(key, {"values": np.zeros((2, 2), np.float32)})
    np.testing.assert_array_equal(cache.load(key)["values"], winner["values"])
    assert [p.name for p in cache.path(key).parent.iterdir()] == [key]
