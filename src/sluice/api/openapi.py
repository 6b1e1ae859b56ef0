"""The admin API described as OpenAPI 3.1 (served at ``/admin/openapi.json``, built once)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from sluice.keys.spec import KeyChange, KeyCreate
from sluice.settings import AlertRuleSettings

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_NULLABLE_INT = {"type": ["integer", "null"]}
_KEY = {
    "type": "object",
    "description": "A virtual key. `key` (the secret) is present only in the answers to create and rotate.",
    "required": ["id", "object", "name", "hint", "status", "created_at", "blocked", "metadata"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "virtual_key"},
        "key": {"type": "string", "description": "The secret, shown once."},
        "name": {"type": "string"},
        "hint": {"type": "string", "description": "The key's last four characters."},
        "status": {"enum": ["active", "blocked", "expired", "revoked"]},
        "owner": {"type": ["string", "null"]},
        "team": {"type": ["string", "null"]},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "created_at": {"type": "integer", "description": "Unix seconds."},
        "updated_at": _NULLABLE_INT,
        "expires_at": _NULLABLE_INT,
        "revoked_at": _NULLABLE_INT,
        "blocked": {"type": "boolean"},
        "limits": {"anyOf": [{"$ref": "#/components/schemas/LimitSettings"}, {"type": "null"}]},
        "user_limits": {"anyOf": [{"$ref": "#/components/schemas/LimitSettings"}, {"type": "null"}]},
        "features": {"type": ["array", "null"], "items": {"type": "string"}},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        "require_feature": {"type": "boolean"},
        "log_content": {"type": "boolean"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_PROVIDER_KEY = {
    "type": "object",
    "description": "A provider key stored encrypted. The key itself is never returned, only a fingerprint.",
    "required": ["id", "object", "provider", "label", "fingerprint", "created_at", "usable"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "provider_key"},
        "provider": {"type": "string", "description": "The provider account's name in the config."},
        "label": {"type": "string"},
        "fingerprint": {"type": "string", "description": "fp_ + 16 hex of the key's SHA-256."},
        "created_at": {"type": "integer"},
        "usable": {"type": "boolean", "description": "This instance's key-encryption keys can open it."},
        "deleted": {"type": "boolean"},
    },
}
_NEW_PROVIDER_KEY = {
    "type": "object",
    "required": ["provider", "key"],
    "additionalProperties": False,
    "properties": {
        "provider": {"type": "string"},
        "key": {"type": "string", "description": "The provider's API key (stored encrypted)."},
        "label": {"type": "string"},
    },
}
_COUNTER = {
    "type": "object",
    "required": ["scope", "metric", "window", "spent", "reserved"],
    "properties": {
        "scope": {"type": "string", "description": "key:ID, user:KEY_ID:USER, team:NAME, feature:NAME, …"},
        "metric": {"enum": ["usd", "tokens", "requests", "concurrent"]},
        "window": {
            "type": "string",
            "description": "all, m2026-11, w2026-11-23, d2026-11-24, t<unix minute>",
        },
        "spent": {"type": "integer", "description": "Nano-dollars for usd."},
        "reserved": {"type": "integer"},
        "spent_usd": {"type": "string"},
        "reserved_usd": {"type": "string"},
    },
}
_NULLABLE_STR = {"type": ["string", "null"]}
_DEPLOYMENT = {
    "type": "object",
    "required": ["alias", "strategy", "id", "provider", "model", "state", "ejected_until"],
    "properties": {
        "alias": {"type": "string"},
        "strategy": {"enum": ["priority", "weighted", "lowest-latency", "lowest-cost"]},
        "id": {"type": "string", "description": "provider/model: health is kept per deployment"},
        "provider": {"type": "string"},
        "model": {"type": "string"},
        "weight": {"type": "integer"},
        "state": {"enum": ["healthy", "ejected", "probing"]},
        "ejected_until": {**_NULLABLE_STR, "description": "ISO 8601 UTC, while ejected"},
        "consecutive_failures": {"type": "integer"},
        "ejections": {"type": "integer", "description": "In a row; each doubles the next ejection"},
        "attempts": {"type": "integer"},
        "errors": {"type": "integer"},
        "error_rate": {"type": "number", "description": "Moving average of failures (0 to 1)"},
        "latency_ms": {"type": ["number", "null"], "description": "Moving average of successful calls"},
    },
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _list_of(schema: str) -> dict[str, Any]:
    items = {"$ref": f"#/components/schemas/{schema}"}
    body = {
        "type": "object",
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": items}},
    }
    return {"content": {"application/json": {"schema": body}}}


_ALERT = {
    "type": "object",
    "description": "An alert as logged: fired once (across instances), with each channel's delivery.",
    "required": ["id", "key", "rule", "scope", "summary", "facts", "created_us", "test", "deliveries"],
    "properties": {
        "id": {"type": "string", "description": "alrt_ + 24 hex"},
        "key": {
            "type": "string",
            "description": "What it is about in this period: the unit of deduplication",
        },
        "rule": {
            "enum": [
                "threshold",
                "projected_overspend",
                "spend_anomaly",
                "credit_runway",
                "provider_health",
                "test",
            ]
        },
        "scope": {"type": "string", "description": "key:ID, team:NAME, provider:NAME, alias:NAME, …"},
        "summary": {"type": "string"},
        "facts": {
            "type": "object",
            "description": "The rule's numbers (money in nano-dollars); docs/alerts.md",
        },
        "created_us": {"type": "integer", "description": "Unix microseconds"},
        "test": {"type": "boolean"},
        "deliveries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["channel", "status", "attempts", "last_error", "updated_us"],
                "properties": {
                    "channel": {"type": "string"},
                    "status": {"enum": ["pending", "sent", "failed"]},
                    "attempts": {"type": "integer"},
                    "last_error": _NULLABLE_STR,
                    "updated_us": {"type": "integer"},
                },
            },
        },
    },
}
_ALERT_RULE = {
    "type": "object",
    "required": ["scope"],
    "properties": {
        "scope": {"type": "string"},
        "source": {"enum": ["config", "api"]},
        "thresholds": {"type": ["array", "null"], "items": {"type": "integer"}},
        "rules": {"type": ["array", "null"], "items": {"type": "string"}},
        "channels": {"type": ["array", "null"], "items": {"type": "string"}},
        "deleted": {"type": "boolean"},
    },
}
_ALERT_TEST = {
    "type": "object",
    "required": ["channel"],
    "additionalProperties": False,
    "properties": {"channel": {"type": "string", "description": "A channel's name in the config"}},
}


_USD = {"type": ["string", "null"], "description": "USD, a decimal string (exact)"}
_RUNWAY = {
    "type": "object",
    "description": "A free or trial account's runway: credit, burn, today's allowance, expiry.",
    "required": ["provider", "plan", "remaining_usd", "burn_per_day_usd", "days_left", "next_reset"],
    "properties": {
        "provider": {"type": "string"},
        "preset": {"type": "string"},
        "plan": {"enum": ["free", "trial", "paid"]},
        "credits_usd": _USD,
        "spent_usd": _USD,
        "remaining_usd": _USD,
        "remaining_from": {"enum": ["provider", "ledger"]},
        "burn_per_day_usd": _USD,
        "days_left": {"type": ["integer", "null"]},
        "daily_requests": {"type": ["integer", "null"]},
        "requests_today": {"type": "integer"},
        "requests_left_today": {"type": ["integer", "null"]},
        "next_reset": {"type": "string", "format": "date-time"},
        "expires": {"type": ["string", "null"], "format": "date"},
        "days_to_expiry": {"type": ["integer", "null"]},
        "allowances": {"type": "string"},
    },
}
_CHECK = {
    "type": "object",
    "required": ["name", "status", "detail", "data"],
    "properties": {
        "name": {"type": "string"},
        "status": {"enum": ["pass", "warn", "fail", "skip"]},
        "detail": {"type": "string"},
        "data": {"type": "object", "description": "Measurements: latency_ms, ttft_ms, status_code, shape, …"},
    },
}
_SMOKE_RUN = {
    "type": "object",
    "description": "A smoke run: every check on every selected deployment, and what it burned.",
    "required": ["id", "ok", "cap_usd", "cost_usd", "deployments"],
    "properties": {
        "object": {"const": "smoke.run"},
        "id": {"type": "string"},
        "started_us": {"type": "integer"},
        "finished_us": {"type": "integer"},
        "ok": {"type": "boolean"},
        "light": {"type": "boolean"},
        "cap_usd": _USD,
        "cost_usd": _USD,
        "input_tokens": {"type": "integer"},
        "output_tokens": {"type": "integer"},
        "deployments": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "alias": {"type": "string"},
                    "status": {"enum": ["pass", "warn", "fail"]},
                    "cost_usd": _USD,
                    "checks": {"type": "array", "items": {"$ref": "#/components/schemas/SmokeCheck"}},
                },
            },
        },
        "drift": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Changes since the previous run",
        },
    },
}
_SMOKE_ASK = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deployments": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Aliases, providers, globs",
        },
        "max_usd": {
            "type": ["string", "number"],
            "description": "The run's spend cap (default smoke.max_usd)",
        },
        "light": {"type": "boolean", "description": "Only a completion and a stream (as a canary)"},
    },
}
_READINESS = {
    "type": "object",
    "required": ["ready", "items"],
    "properties": {
        "object": {"const": "readiness"},
        "ready": {"type": "boolean", "description": "No item fails"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "status", "found", "fix"],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"enum": ["pass", "warn", "fail"]},
                    "found": {"type": "string"},
                    "fix": {"type": "string"},
                },
            },
        },
    },
}


def _op(summary: str, ok: dict[str, Any], status: str = "200", body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"adminKey": []}],
        "responses": {
            status: {"description": "OK", **ok},
            "400": {"description": "Invalid settings", **_json("Error")},
            "401": {"description": "Missing or unknown key", **_json("Error")},
            "403": {"description": "Not the admin key", **_json("Error")},
            "404": {"description": "No such key (or revoked)", **_json("Error")},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


@functools.cache
def admin_openapi() -> dict[str, Any]:
    """The document."""
    key_path = {"parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice admin API", "version": "1"},
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_schemas(KeyCreate, KeyChange, AlertRuleSettings),
                "Key": _KEY,
                "Counter": _COUNTER,
                "Deployment": _DEPLOYMENT,
                "Alert": _ALERT,
                "AlertTest": _ALERT_TEST,
                "AlertRule": _ALERT_RULE,
                "Runway": _RUNWAY,
                "SmokeCheck": _CHECK,
                "SmokeRun": _SMOKE_RUN,
                "SmokeAsk": _SMOKE_ASK,
                "Readiness": _READINESS,
                "ProviderKey": _PROVIDER_KEY,
                "NewProviderKey": _NEW_PROVIDER_KEY,
                "Error": _ERROR,
            },
        },
        "paths": {
            "/admin/keys": {
                "get": _op("List keys", _list_of("Key")),
                "post": _op(
                    "Create a key (the secret is in this answer only)", _json("Key"), "201", "KeyCreate"
                ),
            },
            "/admin/keys/{id}": {
                **key_path,
                "get": _op("Get a key", _json("Key")),
                "patch": _op(
                    "Change a key (fields left out are kept; null clears)", _json("Key"), body="KeyChange"
                ),
                "delete": _op("Revoke a key", _json("Key")),
            },
            **{
                f"/admin/keys/{{id}}/{action}": {**key_path, "post": _op(summary, _json("Key"))}
                for action, summary in (
                    ("rotate", "A new secret for the same key (in this answer only)"),
                    ("block", "Refuse the key's requests until unblocked"),
                    ("unblock", "Accept the key's requests again"),
                    ("revoke", "Revoke a key for good"),
                )
            },
            "/admin/provider-keys": {
                "get": _op("List stored provider keys (fingerprints only)", _list_of("ProviderKey")),
                "post": _op(
                    "Store a provider key, encrypted (needs SLUICE_KEK)",
                    _json("ProviderKey"),
                    "201",
                    "NewProviderKey",
                ),
            },
            "/admin/provider-keys/{id}": {
                **key_path,
                "delete": _op("Delete a stored provider key", _json("ProviderKey")),
            },
            "/admin/limits": {
                "get": {
                    **_op("Budget counters", _list_of("Counter")),
                    "parameters": [{"name": "scope", "in": "query", "schema": {"type": "string"}}],
                }
            },
            "/admin/deployments": {
                "get": _op("Deployments and their health, as this instance sees it", _list_of("Deployment"))
            },
            "/admin/alerts": {
                "get": {
                    **_op("The alert log, newest first, with each delivery", _list_of("Alert")),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        }
                    ],
                }
            },
            "/admin/alert-rules": {
                "get": _op(
                    "Alert overrides per scope, from the config and from this API", _list_of("AlertRule")
                )
            },
            "/admin/alert-rules/{scope}": {
                "parameters": [
                    {
                        "name": "scope",
                        "in": "path",
                        "required": True,
                        "description": "A scope id or glob pattern, URL-encoded (key%3Akey_1, team%3A*)",
                        "schema": {"type": "string"},
                    }
                ],
                "put": _op("Set a scope's alert override", _json("AlertRule"), body="AlertRuleSettings"),
                "delete": _op("Remove a scope's override set through this API", _json("AlertRule")),
            },
            "/admin/credits": {"get": _op("Each free or trial account's credit runway", _list_of("Runway"))},
            "/admin/smoke": {
                "get": {
                    **_op("The latest smoke runs, newest first", _list_of("SmokeRun")),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        }
                    ],
                },
                "post": _op(
                    "Run the smoke checks now (answers when the run ends)", _json("SmokeRun"), body="SmokeAsk"
                ),
            },
            "/admin/readiness": {"get": _op("The production-readiness checklist", _json("Readiness"))},
            "/admin/alerts/test": {
                "post": {
                    **_op("Send a test alert to one channel now", _json("Alert"), body="AlertTest"),
                    "responses": {
                        **_op("", _json("Alert"))["responses"],
                        "200": {"description": "Delivered", **_json("Alert")},
                        "404": {"description": "No such channel", **_json("Error")},
                        "502": {"description": "The channel did not take it", **_json("Error")},
                    },
                }
            },
        },
    }
