"""The demo reads durations in the services' grammar: what they refuse, it refuses."""

import re
from pathlib import Path

import pytest
from stack import DURATION_PATTERN, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2m", 120), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), (" 20s ", 20)],
)
def test_whole_numbers_with_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["90", "1.5s", "", "soon", "2 m", "1m30", "-5s", "5min", "1sec"])
def test_what_the_services_refuse_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_the_grammar_is_the_services_own():
    rust = (Path(__file__).parents[2] / "libs/duration-text/src/lib.rs").read_text()
    pattern = re.search(r'pub const PATTERN: &str = "(.*)";', rust).group(1)
    assert pattern == DURATION_PATTERN
