"""Whether permission patterns cover a wildcard subscription, judged before it starts.

A wildcard (``chat.*``, ``chat.#``; :mod:`app.hub.wildcard`) may be used only when the
identity's own patterns cover *every* topic it can match, so nothing it could ever deliver
is a topic the identity may not read: ``chat.*`` is covered by ``chat.*``, ``chat.**`` or
``**``, not by ``chat.a``; ``chat.#`` (``chat`` and everything below it) needs ``chat`` and
``chat.**``, or ``**``. This is decided once, at SUBSCRIBE, instead of checking each topic
at delivery: a check per event would cost a decision (and a hook call) per event, and a
subscription would then silently lack some events instead of being refused up front.

Each case of the wildcard (``#`` is two: no word, or one or more) must be covered by one
pattern; a case covered only by several patterns together (say ``chat.*`` by a list of
every word) is refused, which errs on the safe side.
"""

from __future__ import annotations

from typing import Iterable

from .patterns import SUB

__all__ = ["covers"]

_MANY = "+"  # one or more words of any kind (the wildcard's "#" after its no-word case)


def covers(patterns: Iterable[str], sub: str | None, wildcard: str) -> bool:
    """True when ``patterns`` (a permission list, ``{sub}`` being ``sub``) cover every
    topic ``wildcard`` can match."""
    patterns = tuple(patterns)
    if "**" in patterns:
        return True
    words = wildcard.split(".")
    cases = [words]
    if words[-1] == "#":
        cases = [words[:-1] + [_MANY]]
        if len(words) > 1:
            cases.append(words[:-1])  # "#" matching no word at all
    return all(any(_covers(pattern.split("."), case, sub) for pattern in patterns) for case in cases)


def _covers(pattern: list[str], case: list[str], sub: str | None) -> bool:
    for index, word in enumerate(pattern):
        if word == "**":  # last: one or more words of anything
            return len(case) > index
        if index >= len(case):
            return False
        wanted = case[index]
        if wanted == _MANY:
            return False  # one pattern word cannot cover one-or-more wildcard words
        if word == "*":
            continue  # any one word, a wildcard "*" included
        if SUB in word:
            if sub is None:
                return False
            word = word.replace(SUB, sub)
        if wanted == "*" or wanted != word:
            return False
    return len(case) == len(pattern)
