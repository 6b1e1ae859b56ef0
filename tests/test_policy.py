"""Attribution rules: where feature, tags and user come from, and what a key's allow-lists refuse."""

from __future__ import annotations

import pytest

from sluice.errors import InvalidRequest, PermissionDenied
from sluice.keys.policy import MAX_TAGS, OPEN, KeyPolicy, attribute, parse_tags
from sluice.pricing.usage import TokenUsage, estimate_tokens, estimated


def test_headers_win_over_metadata_and_metadata_pairs_become_tags() -> None:
    body = {"metadata": {"feature": "from-body", "session": "s1", "n": 3}, "user": "u-body"}
    who = attribute(OPEN, body, "from-header", "env=prod", None)
    assert (who.feature, who.tags, who.user) == ("from-header", {"session": "s1", "env": "prod"}, "u-body")
    who = attribute(OPEN, body, None, None, "u-header")
    assert (who.feature, who.tags, who.user) == ("from-body", {"session": "s1"}, "u-header")


def test_user_falls_back_to_safety_identifier_and_ignores_junk() -> None:
    assert attribute(OPEN, {"safety_identifier": "sid", "user": "u"}, None, None, None).user == "sid"
    assert attribute(OPEN, {"user": 42}, None, None, None).user is None
    assert attribute(OPEN, {"user": "x" * 300}, None, None, None).user is None
    assert attribute(OPEN, {}, None, None, None) == attribute(OPEN, {"metadata": "nope"}, None, None, None)


def test_tag_header_parsing() -> None:
    assert parse_tags(" a=1 , b = two ,, c=") == {"a": "1", "b": "two", "c": ""}
    with pytest.raises(InvalidRequest, match="expected key=value"):
        parse_tags("a=1,b")


@pytest.mark.parametrize(
    ("feature", "tags"),
    [
        ("has space", None),
        ("x" * 65, None),
        ("-leading", None),
        (None, "bad key!=1"),
        (None, "k=" + "v" * 129),
        (None, ",".join(f"k{i}=v" for i in range(MAX_TAGS + 1))),
    ],
)
def test_malformed_names_are_client_errors(feature: str | None, tags: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        attribute(OPEN, {}, feature, tags, None)
    assert info.value.code == "invalid_tag"


def test_key_allow_lists_and_required_feature() -> None:
    policy = KeyPolicy(
        features=frozenset({"search"}), tags=frozenset({"env", "tier=gold"}), require_feature=True
    )
    with pytest.raises(InvalidRequest, match="requires a feature tag"):
        attribute(policy, {}, None, None, None)
    with pytest.raises(PermissionDenied, match="feature tag 'chat'"):
        attribute(policy, {}, "chat", None, None)
    with pytest.raises(PermissionDenied, match="tier='silver'"):
        attribute(policy, {}, "search", "tier=silver", None)
    with pytest.raises(PermissionDenied):
        attribute(policy, {"metadata": {"feature": "search", "other": "x"}}, None, None, None)
    who = attribute(policy, {}, "search", "env=anything,tier=gold", None)
    assert who.tags == {"env": "anything", "tier": "gold"}


def test_estimates_err_high_and_keep_what_was_reported() -> None:
    assert estimate_tokens(0, 0) == 0
    assert estimate_tokens(9, 1) == 3  # 9 characters ≈ 3 tokens (rounded up)
    assert estimate_tokens(10, 7) == 7  # one token per streamed delta at least
    assert estimated(None, 100, 7) == TokenUsage(input_tokens=100, output_tokens=7)
    reported = TokenUsage(input_tokens=40, cache_read_tokens=10, output_tokens=1)  # Anthropic message_start
    assert estimated(reported, 100, 7) == TokenUsage(input_tokens=40, cache_read_tokens=10, output_tokens=7)
    assert estimated(TokenUsage(output_tokens=9), 100, 7) == TokenUsage(input_tokens=100, output_tokens=9)
