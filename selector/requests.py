"""What a decoded request asks for: its policy, its constraints and its prompts, each checked against the
pool and the limits before anything is scored (selector/admission.py has already decoded the message).

Every problem is an InvalidRequest naming the API field, which the servicer answers INVALID_ARGUMENT.
"""

from __future__ import annotations

import re

from selector.config import SelectorConfig
from selector.constraints import Constraints, InvalidRequest
from selector.policies import POLICIES, Policy, make_policy
from selector.pool import Pool
from selector.proto import selector_pb2 as pb

# A letter or a digit (str.isalnum's sense, any script): a prompt without one has no token the predictor
# knows (only zero-width characters, emoji, marks, punctuation) and is scored by the prior alone.
_CONTENT = re.compile(r"[^\W_]")


def policy_of(request: pb.RouteRequest, default: Policy) -> Policy:
    """The request's policy, or `default` where it sets none."""
    # The oneof's field names are the registry's names, and each message's one field is the parameter.
    which = request.WhichOneof("policy")
    if which is None:
        return default
    return make_policy(which, getattr(getattr(request, which), POLICIES[which].parameter))


def max_model_list(pool: Pool) -> int:
    """The longest allow or deny list accepted: room for every pool name a few times over (repeats are
    harmless), far short of the 20M names a 64 MiB message can carry, whose checking alone held the event
    loop for seconds."""
    return max(256, 4 * len(pool.names))


def constraints_of(message: pb.Constraints, pool: Pool, unconstrained: Constraints) -> Constraints:
    """The request's constraints, validated against the pool; `unconstrained` where the message is empty."""
    if message.ByteSize() == 0:        # unset or empty: no constraints
        return unconstrained
    limit = max_model_list(pool)
    for field, names in (("constraints.allow", message.allow), ("constraints.deny", message.deny)):
        if len(names) > limit:             # len() of a repeated field makes no strings
            raise InvalidRequest(field, f"holds {len(names)} names, over the limit of {limit} (the pool has "
                                        f"{len(pool.names)} models)")
    constraints = Constraints(
        allow=tuple(message.allow), deny=tuple(message.deny),
        max_latency_ms=message.max_latency_ms if message.HasField("max_latency_ms") else None,
        max_cost_usd=message.max_cost_usd if message.HasField("max_cost_usd") else None)
    constraints.validate(pool)
    return constraints


def check_prompt_count(count: int, config: SelectorConfig) -> None:
    """Raises InvalidRequest unless the repeated field "prompts" holds 1 to max_batch_prompts prompts. Called
    on len() of the field before its strings are made: 16M two-byte prompts fit a 64 MiB message, and making
    them took 1.1 GB and seconds of the event loop before the count refused them."""
    if not count:
        raise InvalidRequest("prompts", "must hold at least one prompt")
    if count > config.max_batch_prompts:
        raise InvalidRequest("prompts", f"{count} prompts is over the limit of {config.max_batch_prompts} per call")


def check_prompts(prompts: list[str], field: str, config: SelectorConfig) -> None:
    """Raises InvalidRequest unless every prompt is 1 to max_prompt_bytes of text; `field` is "prompt" or
    "prompts" (whose count check_prompt_count has checked before the strings were made)."""
    limit = config.max_prompt_bytes
    for i, prompt in enumerate(prompts):
        name = field if field == "prompt" else f"prompts[{i}]"
        if not prompt.strip():
            raise InvalidRequest(name, f"must be 1 to {limit} bytes of UTF-8 text, got an empty prompt")
        # A character is at most 4 UTF-8 bytes: most prompts skip the encode.
        if len(prompt) * 4 > limit and len(prompt.encode("utf-8")) > limit:
            raise InvalidRequest(name, f"must be 1 to {limit} bytes of UTF-8 text, got "
                                       f"{len(prompt.encode('utf-8'))} bytes")


def is_content_free(prompt: str) -> bool:
    """True for a prompt without a letter or digit (RouteDecision.content_free)."""
    return _CONTENT.search(prompt) is None
