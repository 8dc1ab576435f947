import json

import pytest

from bitsfusion.errors import ConfigError
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme

Q2, Q4, Q8 = QScheme(2), QScheme(4), QScheme(8)


def test_precedence_exact_then_first_regex_then_default() -> None:
    plan = BitPlan(
        default=Q2,
        rules={"re:.*attention.*": Q4, "re:.*query": Q8, "encoder.0.attention.query": Q8, "pooler": None},
    )
    assert plan.resolve("encoder.0.attention.query") == Q8  # exact beats regex
    assert plan.resolve("encoder.1.attention.query") == Q4  # first matching regex wins
    assert plan.explain("encoder.1.attention.query") == "re:.*attention.*"
    assert plan.resolve("pooler") is None
    assert plan.resolve("encoder.1.output.dense") == Q2
    assert plan.explain("encoder.1.output.dense") == "default"


def test_regex_must_match_whole_name() -> None:
    plan = BitPlan(default=None, rules={"re:dense": Q4})
    assert plan.resolve("dense") == Q4
    assert plan.resolve("output.dense") is None


def test_uniform_with_skips() -> None:
    plan = BitPlan.uniform(bits=3, group_size=32, skip=("re:.*conv_in", "head"))
    assert plan.resolve("x.conv_in") is None and plan.resolve("head") is None
    assert plan.resolve("body") == QScheme(3, group_size=32)


def test_save_load_round_trip(tmp_path) -> None:
    plan = BitPlan(default=Q2, rules={"re:a.*": Q4, "b": None})
    path = plan.save(tmp_path / "plan.json")
    assert BitPlan.load(path) == plan
    assert json.loads(path.read_text())["format"] == "bitsfusion.plan/1"


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not a valid JSON plan"),
        ('{"rules": {"a": {"bits": 12}}}', "plan rule 'a'.*bits must be in 1..8"),
        ('{"default": {"bit": 2}}', "plan default"),
        ('{"format": "other/9"}', "unsupported plan format"),
        ('{"rules": {"re:(": null}}', "not a valid regular expression"),
    ],
    ids=["not-json", "bad-bits", "bad-default", "bad-format", "bad-regex"],
)
def test_bad_plan_files_raise_config_error(tmp_path, text: str, words: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        BitPlan.load(path)


def test_missing_plan_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        BitPlan.load(tmp_path / "nope.json")
