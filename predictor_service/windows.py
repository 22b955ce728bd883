"""An encoder's window: which of a long prompt's token ids it reads (the first max_tokens - tail_tokens and
the last tail_tokens), checked, named and cut.
"""

from __future__ import annotations


def check_window(max_tokens: int, tail_tokens: int) -> None:
    if not (isinstance(max_tokens, int) and isinstance(tail_tokens, int)) or max_tokens < 1 \
            or not 0 <= tail_tokens <= max_tokens:
        raise ValueError(f"a window needs max_tokens >= 1 and 0 <= tail_tokens <= max_tokens, got max_tokens "
                         f"{max_tokens!r}, tail_tokens {tail_tokens!r}")


def window_name(max_tokens: int, tail_tokens: int) -> str:
    return f"{max_tokens - tail_tokens}+{tail_tokens}" if tail_tokens else str(max_tokens)


def _window(ids: list[int], max_tokens: int, tail_tokens: int) -> list[int]:
    """The first max_tokens - tail_tokens and the last tail_tokens of ids, when there are more than
    max_tokens; all of them otherwise."""
    if len(ids) <= max_tokens:
        return ids
    if not tail_tokens:
        return ids[:max_tokens]
    return ids[:max_tokens - tail_tokens] + ids[len(ids) - tail_tokens:]


__all__ = ["check_window", "window_name"]
