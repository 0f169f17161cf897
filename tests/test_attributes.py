"""Report attributes: configuration, the rule-based extractor (negation, synonyms), Eq.5 tokens."""

import json

import numpy as np
import pytest

from trainables.data import DataError, load_dataset
from trainables.encoders.attributes import (
    EXTRACTORS,
    AttributeConfig,
    AttributeExtractor,
    RuleBasedExtractor,
    attribute_tokens,
    get_extractor,
    register_extractor,
)

CONFIG = AttributeConfig.load()  # the packaged synth-clinic vocabulary
NAMES = CONFIG.names


def states(text: str) -> dict[str, int]:
    row = RuleBasedExtractor(CONFIG).extract([text])[0]
    return {n: int(v) for n, v in zip(NAMES, row) if v != -1}


def test_packaged_config_loads_in_order():
    assert NAMES[:3] == ["irregular border", "ulceration", "pigment network"] and len(NAMES) == 8
    assert CONFIG.prompts()[:2] == ["irregular border: present", "irregular border: absent"]
    assert len(CONFIG.digest()) == 64


@pytest.mark.parametrize("text, expected", [
    ("Irregular border noted.", {"irregular border": 1}),
    ("Shows ulceration.", {"ulceration": 1}),
    ("Findings include streaks.", {"streaks": 1}),
    ("No ulceration.", {"ulceration": 0}),
    ("Without streaks.", {"streaks": 0}),
    ("Negative for blue-white veil.", {"blue-white veil": 0}),
    ("No evidence of regression structures.", {"regression structures": 0}),
    ("Free of atypical vessels.", {"vascular structures": 0}),
    ("Pigment network absent.", {"pigment network": 0}),
    ("Streaks not seen.", {"streaks": 0}),
    ("Ulceration: absent.", {"ulceration": 0}),
    ("Ulceration: present.", {"ulceration": 1}),
    ("Ulceration is not identified.", {"ulceration": 0}),
    ("There is not any ulceration.", {"ulceration": 0}),
])
def test_single_mentions_and_negation_cues(text, expected):
    assert states(text) == expected


@pytest.mark.parametrize("text, expected", [
    # synonyms map to their attribute; hyphens and case do not matter
    ("Ragged border seen.", {"irregular border": 1}),
    ("Bluish veil observed. BLUE WHITE VEIL noted.", {"blue-white veil": 1}),
    ("Radial streaming present.", {"streaks": 1}),
    ("Scar-like depigmentation noted.", {"regression structures": 1}),
    # longest match wins: "regression structures" is one mention, "irregular dots" is not "irregular border"
    ("No regression structures.", {"regression structures": 0}),
    ("Irregular dots noted.", {"dots and globules": 1}),
    ("Dots and globules absent.", {"dots and globules": 0}),
])
def test_synonyms_and_longest_match(text, expected):
    assert states(text) == expected


@pytest.mark.parametrize("text, expected", [
    # a negation cue spreads over a coordinated list ...
    ("No ulceration, streaks or bluish veil.", {"ulceration": 0, "streaks": 0, "blue-white veil": 0}),
    ("Neither ulceration nor streaks.", {"ulceration": 0, "streaks": 0}),
    # ... and a shared value word backwards over one
    ("Ulceration and streaks are absent.", {"ulceration": 0, "streaks": 0}),
    ("Irregular margin, ulcer and pseudopods are noted.", {"irregular border": 1, "ulceration": 1, "streaks": 1}),
    # but not across a clause boundary or past another mention's own value word
    ("No ulceration. Streaks present.", {"ulceration": 0, "streaks": 1}),
    ("No ulceration but streaks.", {"ulceration": 0, "streaks": 1}),
    ("Irregular border noted, ulceration absent.", {"irregular border": 1, "ulceration": 0}),
    ("No ulceration, irregular border present.", {"ulceration": 0, "irregular border": 1}),
    ("Irregular border with no ulceration.", {"irregular border": 1, "ulceration": 0}),
    ("Without ulceration, with streaks.", {"ulceration": 0, "streaks": 1}),
    ("Negative for ulceration; positive for atypical vessels.", {"ulceration": 0, "vascular structures": 1}),
    # the last statement about an attribute wins
    ("Ulceration noted. On review, no ulceration.", {"ulceration": 0}),
])
def test_scope_of_cues(text, expected):
    assert states(text) == expected


def test_unrelated_text_and_missing_reports_are_unmentioned():
    ex = RuleBasedExtractor(CONFIG)
    out = ex.extract(["Dermoscopy of a pigmented lesion on the back. Follow-up advised.", ""])
    assert out.dtype == np.int8 and out.shape == (2, 8) and (out == -1).all()


def test_configured_value_words_and_custom_vocabulary(tmp_path):
    cfg = tmp_path / "attrs.json"
    cfg.write_text(json.dumps({"attributes": [
        {"name": "pleural effusion", "synonyms": ["effusion"], "values": {"positive": ["reported"], "negative": ["resolved"]}},
        {"name": "cardiomegaly"},
    ]}))
    config = AttributeConfig.load(cfg)
    ex = RuleBasedExtractor(config)
    np.testing.assert_array_equal(
        ex.extract(["Effusion resolved, cardiomegaly reported.", "Pleural effusion reported.", "No cardiomegaly."]),
        [[0, 1], [1, -1], [-1, 0]],
    )
    assert config.prompts() == ["pleural effusion: present", "pleural effusion: absent",
                                "cardiomegaly: present", "cardiomegaly: absent"]
    assert config.digest() != CONFIG.digest()


@pytest.mark.parametrize("content, message", [
    ("attributes: []", "non-empty list"),
    ("attributes:\n  - synonyms: [x]", "non-empty string 'name'"),
    ("attributes:\n  - name: a\n    colour: red", "unknown field"),
    ("attributes:\n  - name: a\n    values: {maybe: [x]}", "'positive' and/or 'negative'"),
    ("attributes:\n  - name: a\n  - name: A", "listed twice"),
    ("attributes:\n  - name: a\n    synonyms: [b]\n  - name: b", "names both"),
    ("attributes: [", "cannot parse"),
])
def test_bad_configuration_is_one_line(tmp_path, content, message):
    f = tmp_path / "attrs.yaml"
    f.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        AttributeConfig.load(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_extractor_registry_accepts_plugins():
    @register_extractor("all-positive-test")
    class AllPositive(AttributeExtractor):
        def extract(self, texts):
            return np.ones((len(texts), len(self.config)), np.int8)

    try:
        ex = get_extractor("all-positive-test", CONFIG)
        assert ex.extract(["x"]).tolist() == [[1] * 8]
        assert ex.identity()["extractor"] == "all-positive-test"
    finally:
        EXTRACTORS.pop("all-positive-test")
    with pytest.raises(DataError, match="unknown attribute extractor"):
        get_extractor("gpt-9", CONFIG)


def test_attribute_tokens_gather_the_prompt_table():
    # A = 2 attributes, d = 3: prompts [a0 present, a0 absent, a1 present, a1 absent]
    prompts = np.array([[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0]], np.float32)
    st = np.array([[1, 0], [-1, 1], [0, -1]], np.int8)
    tokens, mask = attribute_tokens(st, prompts)
    np.testing.assert_array_equal(tokens, [
        [[1, 0, 0], [0, 2, 0]],
        [[0, 0, 0], [0, 1, 0]],
        [[2, 0, 0], [0, 0, 0]],
    ])
    np.testing.assert_array_equal(mask, [[True, True], [False, True], [True, False]])


def test_rule_extractor_recovers_the_synth_clinic_table():
    """Agreement with the generator's table over every entry (mentioned or not) of 600 patients.

    The generator writes reports from a closed set of templates and cue words. The rarest of them
    ("<term> not seen") states about 1.5% of all table entries, so a rule missing any template drops
    the agreement below 99%: the thresholds below catch any such gap while the measured value is 100%.
    """
    for seed in (0, 1):
        data = load_dataset(f"synth-clinic:n=600,unmentioned=0.3,missing=0.2,seed={seed}")
        report = data.modalities["report"]
        got = RuleBasedExtractor(CONFIG).extract(list(report.values))
        truth = data.meta["attributes"]
        assert data.meta["attribute_names"] == NAMES
        agree = got == truth
        assert agree.mean() >= 0.99
        assert agree[report.mask].mean(axis=0).min() >= 0.98  # every attribute, available reports only
