"""Checks for the coding exercises at the end of each chapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check(name: str, answer: Any, test: Callable[[Any], None]) -> bool | None:
    """Run ``test(answer)`` and say whether the exercise is solved.

    Args:
        name: the exercise's name, printed with the verdict.
        answer: the reader's answer; ``None`` means "not attempted yet".
        test: raises ``AssertionError`` (with a helpful message) when the answer is wrong.

    Returns:
        True when solved, None when not attempted.

    Raises:
        AssertionError: the answer is wrong; the message says how.
    """
    if answer is None:
        print(f"{name}: not attempted yet (replace the None above with your answer)")
        return None
    test(answer)
    print(f"{name}: correct")
    return True
