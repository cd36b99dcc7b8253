"""Checks for the coding exercises at the end of each chapter.

An exercise is a function the reader completes. Its stub raises ``NotImplementedError``;
:func:`check` runs the chapter's test on it and reports "not attempted yet" while the stub is
untouched, "correct" when the test passes, and the test's own message when it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check(name: str, answer: Callable[..., Any], test: Callable[[Callable[..., Any]], None]) -> bool | None:
    """Run ``test(answer)`` and say whether the exercise is solved.

    Args:
        name: the exercise's name, printed with the verdict.
        answer: the reader's function (the stub raises ``NotImplementedError``).
        test: calls ``answer`` and raises ``AssertionError`` (with a helpful message) when it
            is wrong.

    Returns:
        True when solved, None when not attempted yet.

    Raises:
        TypeError: ``answer`` or ``test`` is not a function (e.g. a result passed instead of
            the function that computes it).
        AssertionError: the answer is wrong; the message says how.
    """
    for label, value in (("answer", answer), ("test", test)):
        if not callable(value):
            raise TypeError(f"{name}: {label} must be a function; got {type(value).__name__} {value!r:.60}")
    try:
        test(answer)
    except NotImplementedError:
        print(f"{name}: not attempted yet (complete the function above, then run this cell again)")
        return None
    print(f"{name}: correct")
    return True
