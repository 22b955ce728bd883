"""The text the predictor scores, built from a chat request's messages.

The predictor was trained on single MMLU-Pro-style prompts (a question and its lettered options), so the
text that matches its training best is what the user asked last:

- `last_user` (default): the content of the last message whose role is "user".
- `system_and_last_user`: the system (or "developer") messages, then the last user message, separated by a
  blank line; for deployments whose system prompt decides how hard a task is ("answer as a tax lawyer").

Content may be a string or a list of parts (the vision/audio form); only the text parts are read, joined with
newlines. Text beyond the predictor's limit (MAX_PROMPT_BYTES of UTF-8) is cut there: the head of a prompt
holds the question, and a long paste should still be routed rather than refused.
"""

from __future__ import annotations

from predictor_service.contract import MAX_PROMPT_BYTES

PROMPT_RULES = {"last_user", "system_and_last_user"}


class BadMessages(ValueError):
    """The request's messages cannot be read; the message names the bad entry."""


def message_text(message: dict, index: int) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise BadMessages(f"messages[{index}].content: a text part needs a string 'text'")
                texts.append(text)
        return "\n".join(texts)
    raise BadMessages(f"messages[{index}].content must be a string or a list of content parts, "
                      f"got {type(content).__name__}")


def scored_text(messages, rule: str = "last_user", max_bytes: int = MAX_PROMPT_BYTES) -> str:
    """The text to score for `messages` (a chat request's list) under `rule`; BadMessages if there is none."""
    if rule not in PROMPT_RULES:
        raise ValueError(f"unknown prompt rule {rule!r}; valid rules are {sorted(PROMPT_RULES)}")
    if not isinstance(messages, list) or not messages:
        raise BadMessages("'messages' must be a non-empty list of {role, content} objects")
    last_user, system = None, []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadMessages(f"messages[{i}] must be an object with a string 'role'")
        role = message["role"]
        if role == "user":
            last_user = i
        elif role in ("system", "developer") and rule == "system_and_last_user":
            system.append(message_text(message, i))
    if last_user is None:
        raise BadMessages("'messages' holds no message with role 'user', which is what Routoo scores")
    text = message_text(messages[last_user], last_user)
    if not text.strip():
        raise BadMessages(f"messages[{last_user}] (the last user message) has no text to score")
    if system:
        text = "\n\n".join([*(s for s in system if s.strip()), text])
    # Stripped before the cut: the edges' whitespace gives no token, and a paste that starts with 256 KiB of
    # it would otherwise be cut to nothing and refused as empty.
    return _cut_utf8(text.strip(), max_bytes)


def _cut_utf8(text: str, max_bytes: int) -> str:
    if len(text) * 4 <= max_bytes:            # a character is at most 4 UTF-8 bytes: most prompts skip encoding
        return text
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", errors="ignore")
