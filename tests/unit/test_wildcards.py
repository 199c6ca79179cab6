"""Wildcard topics (app.hub.wildcard) and whether permission patterns cover them (app.auth.wildcards)."""

from __future__ import annotations

import pytest

from app.auth.wildcards import covers
from app.hub.wildcard import pattern_problem, pattern_regex


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("chat.*", "chat.a", True),
        ("chat.*", "chat", False),
        ("chat.*", "chat.a.b", False),
        ("chat.#", "chat", True),
        ("chat.#", "chat.a", True),
        ("chat.#", "chat.a.b", True),
        ("chat.#", "chatx", False),
        ("*.news", "room.news", True),
        ("*.news", "news", False),
        ("a.*.c", "a.b.c", True),
        ("#", "anything.at.all", True),
        ("chat.*", "chat.", False),
        ("ch:at.*", "ch:at.x", True),
    ],
)
def test_matching(pattern, topic, matches):
    assert (pattern_regex(pattern).fullmatch(topic) is not None) is matches


@pytest.mark.parametrize("pattern", ["a.#.b", "#.a", "a.b*", "a..b", "", "a." + "b" * 130, "a/b.*"])
def test_bad_patterns(pattern):
    assert pattern_problem(pattern) is not None


@pytest.mark.parametrize(
    ("patterns", "sub", "wildcard", "covered"),
    [
        (["chat.*"], None, "chat.*", True),
        (["chat.**"], None, "chat.*", True),
        (["**"], None, "chat.#", True),
        (["chat.a", "chat.b"], None, "chat.*", False),  # a finite list never covers "any word"
        (["chat.*"], None, "chat.#", False),  # misses chat and chat.a.b
        (["chat.**"], None, "chat.#", False),  # misses chat itself
        (["chat", "chat.**"], None, "chat.#", True),
        (["*.news"], None, "room.*", False),
        (["room.*"], None, "*.news", False),
        (["*.*"], None, "*.news", True),
        (["user.{sub}.*"], "alice", "user.alice.*", True),
        (["user.{sub}.*"], "bob", "user.alice.*", False),
        (["user.{sub}.*"], None, "user.alice.*", False),
        (["a.*.c"], None, "a.*.c", True),
        (["a.b.c"], None, "a.*.c", False),
    ],
)
def test_coverage(patterns, sub, wildcard, covered):
    assert covers(patterns, sub, wildcard) is covered
