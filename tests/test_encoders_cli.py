"""``python -m search.data encode``: precomputes, prints keys and sizes, reuses the cache."""

import json

from search.data import main

ARGS = ["encode", "--data", "synth-clinic:n=40,imbalance=2", "--text-encoder", "random-bert-tiny",
        "--image-encoder", "resnet-tiny", "--max-length", "24"]


def test_encode_prints_keys_and_sizes_then_hits(tmp_path, capsys):
    assert main(ARGS + ["--cache-dir", str(tmp_path)]) == 0
    first = json.loads(capsys.readouterr().out)
    # default representations: what the registered methods read, image part as a ResNet gives it
    assert set(first["entries"]) == {"report.sentence", "report.cls", "report.tokens", "report.attributes",
                                     "image.pooled", "image.map"}
    assert first["cache_dir"] == str(tmp_path)
    for e in first["entries"].values():
        assert len(e["key"]) == 64 and not e["cached_before"] and e["bytes"] > 0
        assert (tmp_path / e["key"][:2] / e["key"] / "COMPLETE").is_file()
    assert first["entries"]["report.tokens"]["shape"] == [40, 24, 32]
    assert first["entries"]["image.pooled"]["pretrained"] is False
    assert first["total_bytes"] == sum(e["bytes"] for e in first["entries"].values())
    assert main(ARGS + ["--cache-dir", str(tmp_path), "--representations", "text=cls", "image=pooled"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert set(second["entries"]) == {"report.cls", "image.pooled"}
    assert all(e["cached_before"] for e in second["entries"].values())
    assert second["entries"]["report.cls"]["key"] == first["entries"]["report.cls"]["key"]


def test_encode_bad_options_are_one_line(tmp_path, capsys):
    assert main(ARGS + ["--cache-dir", str(tmp_path), "--representations", "image=patches"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet encoder gives pooled/map, not patches" in err
    assert main(ARGS + ["--representations", "text=words"]) == 2
    assert "text representations are sentence, cls, tokens, attributes" in capsys.readouterr().err


def test_encode_with_only_a_text_encoder_encodes_the_text_and_says_what_it_left_out(tmp_path, capsys):
    only_text = ["encode", "--data", "synth-clinic:n=40,imbalance=2", "--text-encoder", "random-bert-tiny",
                 "--max-length", "24", "--cache-dir", str(tmp_path), "--representations", "text=sentence"]
    assert main(only_text) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["entries"]) == {"report.sentence"}
    assert out["skipped"] == {"image": "image modality: give --image-encoder to encode it"}
    assert main(["encode", "--data", "synth-clinic:n=40,imbalance=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --image-encoder and/or --text-encoder" in err
