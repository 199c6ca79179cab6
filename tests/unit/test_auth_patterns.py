"""Topic patterns (app/auth/patterns.py): what ``*``, ``**`` and ``{sub}`` cover, what is
refused, and a property test against a reference matcher written here without regexes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auth.patterns import MAX_PATTERN_LENGTH, InvalidPattern, PatternSet, check_pattern
from app.events import check_topic
from tests.support.auth_helpers import reference_covers


def covers(pattern: str, topic: str, sub: str | None = "alice") -> bool:
    return PatternSet([pattern], sub).allows(topic)


# ------------------------------------------------------------------ the semantics


class TestStar:
    def test_one_segment(self):
        assert covers("room.*", "room.a")
        assert covers("room.*", "room.a-b_c:d")
        assert not covers("room.*", "room")
        assert not covers("room.*", "room.a.b")
        assert not covers("room.*", "rooms.a")

    def test_in_the_middle_and_alone(self):
        assert covers("a.*.c", "a.b.c") and not covers("a.*.c", "a.b.b.c") and not covers("a.*.c", "a.c")
        assert covers("*", "chat") and not covers("*", "chat.x")

    def test_never_an_empty_segment(self):
        assert not covers("room.*", "room.")
        assert not covers("a.*.c", "a..c")


class TestDoubleStar:
    def test_one_or_more_trailing_segments(self):
        assert covers("room.**", "room.a")
        assert covers("room.**", "room.a.b.c")
        assert not covers("room.**", "room")
        assert not covers("room.**", "roomy.a")

    def test_alone_is_everything(self):
        everything = PatternSet(["**"])
        assert all(everything.allows(t) for t in ("a", "chat", "a.b.c", "x:y-z_0", "Z" * 128))
        assert PatternSet.everything().allows("anything.at.all")

    def test_only_last(self):
        for bad in ("**.a", "a.**.b", "**.**"):
            with pytest.raises(InvalidPattern, match="last"):
                check_pattern(bad)


class TestSub:
    def test_stands_for_the_subject(self):
        assert covers("user.{sub}", "user.alice")
        assert not covers("user.{sub}", "user.bob")
        assert covers("inbox-{sub}", "inbox-alice") and covers("{sub}.feed", "alice.feed")

    @pytest.mark.parametrize(
        "sub, literal_topic, not_covered",
        [
            ("a.*", "user.a.*", ["user.a.b", "user.a.x"]),
            ("**", "user.**", ["user.x", "user.x.y"]),
            ("*", "user.*", ["user.x"]),
            ("a.b", "user.a.b", ["user.a", "user.aXb"]),
            (".+", "user..+", ["user.x", "user.xy"]),
            ("[a-z]", "user.[a-z]", ["user.a"]),
        ],
    )
    def test_is_literal_never_a_wildcard(self, sub, literal_topic, not_covered):
        patterns = PatternSet(["user.{sub}"], sub)
        assert patterns.allows(literal_topic)
        for topic in not_covered:
            assert not patterns.allows(topic), topic

    def test_anonymous_clients_get_nothing_from_sub_patterns(self):
        anonymous = PatternSet(["user.{sub}", "chat"], None)
        assert anonymous.allows("chat")
        assert (
            not anonymous.allows("user.") and not anonymous.allows("user.{sub}") and not anonymous.allows("user.None")
        )
        assert not PatternSet(["user.{sub}"], None)


class TestRefused:
    @pytest.mark.parametrize(
        "bad",
        [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a/b",
            "a.b/c",
            "***",
            "a*",
            "*a",
            "a.*b",
            "{su}",
            "{sub",
            "sub}",
            "{SUB}",
            "a\n",
            "é",
            "a\x00",
            "#",
            "a.#",
            ">",
            "a.>",
            "x" * (MAX_PATTERN_LENGTH + 1),
        ],
    )
    def test_bad_patterns(self, bad):
        with pytest.raises(InvalidPattern):
            check_pattern(bad)
        with pytest.raises(InvalidPattern):
            PatternSet([bad])

    @pytest.mark.parametrize("bad", [None, 1, 1.5, b"chat", ["chat"], {"a": 1}, True])
    def test_values_that_are_not_strings(self, bad):
        with pytest.raises(InvalidPattern):
            check_pattern(bad)
        with pytest.raises(InvalidPattern):
            PatternSet([bad])

    @pytest.mark.parametrize("bad", ["chat", "**", b"chat", None, 5])
    def test_a_pattern_set_needs_a_list(self, bad):
        # A bare string would be iterated character by character: "**" as ["*", "*"].
        with pytest.raises(InvalidPattern):
            PatternSet(bad)

    @pytest.mark.parametrize(
        "good",
        [
            "chat",
            "a.b.c",
            "*",
            "**",
            "a.*.c",
            "a.**",
            "user.{sub}",
            "x-{sub}-y",
            "{sub}{sub}",
            "A0_:-",
            "x" * MAX_PATTERN_LENGTH,
        ],
    )
    def test_good_patterns(self, good):
        assert check_pattern(good) == good


# ------------------------------------------------------------------ property tests


SEGMENTS = st.sampled_from(["a", "b", "ab", "room", "*", "**", "{sub}", "u{sub}", "{sub}-x", "x:y", "0"])
PATTERNS = st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join)
SUBS = st.one_of(
    st.none(),
    st.sampled_from(["a", "ab", "a.b", "*", "**", "a.*", ".+", "b", "[x]", "a\\", "u"]),
    st.text(min_size=1, max_size=8),
)
TOPIC_SEGMENTS = st.sampled_from(["a", "b", "ab", "room", "ua", "a-x", "x:y", "0", "", "*", "**", "u*", "{sub}"])
TOPICS = st.lists(TOPIC_SEGMENTS, min_size=1, max_size=6).map(".".join)
PROPERTY = settings(max_examples=1500, deadline=None)


@PROPERTY
@given(patterns=st.lists(PATTERNS, max_size=4), topic=TOPICS, sub=SUBS)
def test_pattern_sets_match_the_reference(patterns, topic, sub):
    valid = [p for p in patterns if "**" not in p.split(".")[:-1]]
    expected = any(reference_covers(p, topic, sub) for p in valid)
    assert PatternSet(valid, sub).allows(topic) is expected


@PROPERTY
@given(pattern=PATTERNS, sub=st.text(min_size=1, max_size=12), suffix=st.sampled_from(["", ".a", ".a.b"]))
def test_sub_covers_itself_and_nothing_wider(pattern, sub, suffix):
    """Whatever characters a subject holds, ``{sub}`` covers exactly that text."""
    if "**" in pattern.split(".")[:-1]:
        return
    filled = pattern.replace("{sub}", sub)
    patterns = PatternSet([pattern], sub)
    for topic in (filled, filled + suffix, "a" + filled, filled.replace(sub, "a", 1) if "{sub}" in pattern else filled):
        assert patterns.allows(topic) is reference_covers(pattern, topic, sub), topic


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=800, deadline=None)
@given(value=st.one_of(st.text(max_size=300), st.text(alphabet="ab*.{}sub-_:", max_size=40), ANYTHING))
def test_check_pattern_raises_only_invalid_pattern(value):
    try:
        assert check_pattern(value) == value
    except InvalidPattern:
        return
    # Accepted: a string of the documented shape, and usable.
    segments = value.split(".")
    assert isinstance(value, str) and 0 < len(value) <= MAX_PATTERN_LENGTH
    assert "**" not in segments[:-1] and "" not in segments
    PatternSet([value], "alice").allows("a.b")


@settings(max_examples=500, deadline=None)
@given(value=ANYTHING, sub=st.one_of(st.none(), st.text(max_size=10)), topic=TOPICS)
def test_pattern_sets_raise_only_invalid_pattern(value, sub, topic):
    try:
        patterns = PatternSet(value, sub)
    except InvalidPattern:
        return
    assert isinstance(patterns.allows(topic), bool)


@PROPERTY
@given(pattern=PATTERNS, topic=TOPICS)
def test_double_star_alone_covers_every_topic(pattern, topic):
    try:
        check_topic(topic)
    except ValueError:
        return
    assert PatternSet(["**"]).allows(topic)
