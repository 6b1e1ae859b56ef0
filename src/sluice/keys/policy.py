"""What a virtual key says about attribution: its team, allowed features and tags, content logging.

Also the tagging rules themselves (pure): where a request's feature, tags and end user come from, and
how they are validated so that neither a typo nor a hostile client can explode the ledger's or the
metrics' cardinality.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.errors import InvalidRequest, PermissionDenied

MAX_TAGS = 16
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 128
MAX_USER = 256
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")
_VALUE = re.compile(r"[^\x00-\x1f\x7f,=]*")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Per-key attribution rules. ``None`` allow-lists accept any well-formed value."""

    team: str | None = None
    features: frozenset[str] | None = None
    tags: frozenset[str] | None = None  # allowed tag keys ("env") or exact pairs ("env=prod")
    require_feature: bool = False
    log_content: bool = False


OPEN = KeyPolicy()


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who and what a request is for, as recorded in the ledger."""

    user: str | None
    feature: str | None
    tags: dict[str, str] | None


_NOBODY = Attribution(None, None, None)


def _name(value: str, what: str, limit: int) -> str:
    if len(value) > limit or not _NAME.fullmatch(value):
        raise InvalidRequest(
            f"Invalid {what} {value[:80]!r}: use letters, digits and _.:/@+- (at most {limit} characters).",
            code="invalid_tag",
        )
    return value


def parse_tags(header: str) -> dict[str, str]:
    """``x-sluice-tags: k=v,k2=v2`` → a dict (whitespace around items ignored)."""
    tags: dict[str, str] = {}
    for raw in header.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequest(
                f"Invalid tag {item[:80]!r} in x-sluice-tags: expected key=value.", code="invalid_tag"
            )
        tags[key.strip()] = value.strip()
    return tags


def attribute(
    policy: KeyPolicy,
    body: Mapping[str, Any],
    feature_header: str | None,
    tags_header: str | None,
    user_header: str | None,
) -> Attribution:
    """The request's end user, feature and tags; headers win over the body's ``metadata``.

    ``metadata`` (OpenAI's string map) contributes ``feature`` and, as tags, its other pairs.
    """
    metadata = body.get("metadata")
    if metadata is None and feature_header is None and tags_header is None and not policy.require_feature:
        user = user_header or body.get("safety_identifier") or body.get("user")
        if user is None:
            return _NOBODY  # the common case: nothing to attribute, nothing to check
    meta: dict[str, str] = (
        {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(metadata, dict)
        else {}
    )
    feature = feature_header.strip() if feature_header else meta.pop("feature", None)
    meta.pop("feature", None)
    tags = {**meta, **parse_tags(tags_header)} if tags_header else meta
    if feature is not None:
        feature = _name(feature, "feature", MAX_TAG_KEY)
        if policy.features is not None and feature not in policy.features:
            raise PermissionDenied(
                f"This key may not use the feature tag {feature!r}.", param="x-sluice-feature"
            )
    elif policy.require_feature:
        raise InvalidRequest(
            "This key requires a feature tag: send the header 'x-sluice-feature: <name>' "
            "or metadata.feature in the body.",
            code="feature_required",
        )
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"Too many tags: at most {MAX_TAGS}.", code="invalid_tag")
    for key, value in tags.items():
        _name(key, "tag key", MAX_TAG_KEY)
        if len(value) > MAX_TAG_VALUE or not _VALUE.fullmatch(value):
            raise InvalidRequest(f"Invalid value for tag {key!r}.", code="invalid_tag")
        if policy.tags is not None and key not in policy.tags and f"{key}={value}" not in policy.tags:
            raise PermissionDenied(f"This key may not use the tag {key}={value!r}.", param="x-sluice-tags")
    user = user_header or body.get("safety_identifier") or body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER):
        user = None  # the body's validation reports a bad `user`; the ledger never stores junk
    return Attribution(user or None, feature, tags or None)
