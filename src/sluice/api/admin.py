"""The admin API for virtual keys and budget counters (admin key only).

    POST   /admin/keys                    create (the key is in this answer and never again)
    GET    /admin/keys                    list
    GET    /admin/keys/{id}               one key
    PATCH  /admin/keys/{id}               change name, owner, team, models, expiry, limits, tags…
    POST   /admin/keys/{id}/rotate        a new secret for the same key (settings and spend kept)
    POST   /admin/keys/{id}/block         refuse its requests (reversible): /unblock
    POST   /admin/keys/{id}/revoke        for good (also DELETE /admin/keys/{id})
    GET    /admin/limits?scope=PREFIX     budget counters: spent and reserved, per scope and period
    POST   /admin/provider-keys           store a provider key, encrypted (answers with its fingerprint)
    GET    /admin/provider-keys           list them (fingerprints only); DELETE /admin/provider-keys/{id}
    GET    /admin/alerts?limit=N          the alert log, newest first, with each channel's delivery
    POST   /admin/alerts/test             send a test alert to a channel ({"channel": NAME})
    GET    /admin/credits                 each free or trial account's runway
    POST   /admin/smoke                   run the smoke checks now ({"deployments", "max_usd", "light"})
    GET    /admin/smoke?limit=N           the latest smoke runs, newest first
    GET    /admin/readiness               the production-readiness checklist
    GET    /admin/alert-rules             alert overrides per scope (from the config and from this API)
    PUT    /admin/alert-rules/{scope}     set a scope's thresholds, rules or channels; DELETE removes it
    GET    /admin/openapi.json            this API, described

Store calls are awaited (SQLite's on a thread): the event loop never waits on the database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.api.openapi import admin_openapi
from sluice.errors import DeliveryFailed, InvalidRequest, MethodNotAllowed, NotFound
from sluice.keys.provider_keys import ProviderKeys
from sluice.keys.spec import KeyChange, KeyCreate
from sluice.ledger.entry import usd_text
from sluice.limits.spec import USD
from sluice.readiness import FAIL, checklist, gather
from sluice.settings import AlertRuleSettings
from sluice.smoke import history
from sluice.store.keys import KeyRow, ProviderKeyRow

if TYPE_CHECKING:
    from sluice.alerts.service import AlertService
    from sluice.api.asgi import Request, SluiceAPI
    from sluice.smoke.service import SmokeService

JSON = [(b"content-type", b"application/json")]


def key_json(row: KeyRow, now: float | None = None, secret: str | None = None) -> dict[str, Any]:
    """A key as the API shows it: never its digest; the secret itself only when just made."""
    now = time.time() if now is None else now
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and now >= row.expires_at:
        status = "expired"
    else:
        status = "blocked" if row.blocked else "active"
    p = row.policy
    out: dict[str, Any] = {
        "id": row.id,
        "object": "virtual_key",
        "name": row.name,
        "hint": row.hint,
        "status": status,
        "owner": row.owner,
        "team": p.team,
        "models": list(row.models) if row.models is not None else None,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "blocked": row.blocked,
        "limits": row.limits.model_dump(mode="json", exclude_none=True) if row.limits else None,
        "user_limits": row.user_limits.model_dump(mode="json", exclude_none=True)
        if row.user_limits
        else None,
        "features": sorted(p.features) if p.features is not None else None,
        "tags": sorted(p.tags) if p.tags is not None else None,
        "require_feature": p.require_feature,
        "log_content": p.log_content,
        "metadata": row.metadata,
    }
    if secret is not None:
        out["key"] = secret
    return out


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], raw: bytes, what: str) -> M:
    """A request body as ``model``, or a 400 naming the first field that is wrong."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise InvalidRequest(f"Invalid {what} at {where}: {first['msg']}.", param=where) from None


def _parse(api: SluiceAPI, model: type[KeyChange], raw: bytes) -> KeyChange:
    change = _validated(model, raw, "key settings")
    if (change.limits or change.user_limits) and not api.accounting.limiter.shared:
        raise InvalidRequest(
            "This gateway runs several workers with in-process counters, which cannot enforce a key's "
            "limits; set `server.counters: redis` to use them.",
            param="limits",
        )
    return change


async def _send(api: SluiceAPI, req: Request, status: int, data: object) -> None:
    await api.respond(req, status, orjson.dumps(data), JSON)


async def keys_collection(api: SluiceAPI, req: Request) -> None:
    """``/admin/keys``: GET lists, POST creates."""
    await api.admin(req)
    method = req.scope["method"]
    if method == "GET":
        rows = await api.keys.all()
        await _send(api, req, 200, {"object": "list", "data": [key_json(r) for r in rows]})
    elif method == "POST":
        change = _parse(api, KeyCreate, await api.read_body(req))
        secret, row = await api.keys.create_from(change)
        await _send(api, req, 201, key_json(row, secret=secret))
    else:
        raise MethodNotAllowed(f"Method {method} is not allowed on /admin/keys; use GET, POST.")


async def key_item(api: SluiceAPI, req: Request, rest: str) -> None:
    """``/admin/keys/{id}`` and its actions."""
    await api.admin(req)
    method = req.scope["method"]
    key_id, _, action = rest.partition("/")
    keys = api.keys

    async def get() -> None:
        await _send(api, req, 200, key_json(await keys.get(key_id)))

    async def patch() -> None:
        change = _parse(api, KeyChange, await api.read_body(req))
        row = await keys.update(key_id, change)
        await _send(api, req, 200, key_json(row))

    async def rotate() -> None:
        secret, row = await keys.rotate(key_id)
        await _send(api, req, 200, key_json(row, secret=secret))

    async def block(blocked: bool) -> None:
        await _send(api, req, 200, key_json(await keys.set_blocked(key_id, blocked)))

    async def revoke() -> None:
        await _send(api, req, 200, key_json(await keys.revoke(key_id)))

    actions: dict[tuple[str, str], Callable[[], Awaitable[None]]] = {
        ("", "GET"): get,
        ("", "PATCH"): patch,
        ("", "DELETE"): revoke,
        ("rotate", "POST"): rotate,
        ("block", "POST"): lambda: block(True),
        ("unblock", "POST"): lambda: block(False),
        ("revoke", "POST"): revoke,
    }
    if not key_id or "/" in action or action not in {a for a, _ in actions}:
        raise NotFound(f"Unknown path: {method} {req.scope['path']}")
    handler = actions.get((action, method))
    if handler is None:
        allowed = ", ".join(sorted(m for a, m in actions if a == action))
        raise MethodNotAllowed(
            f"Method {method} is not allowed on {req.scope['path']}; use {allowed}.",
            headers={"allow": allowed},
        )
    await handler()


async def limits(api: SluiceAPI, req: Request) -> None:
    """``/admin/limits?scope=PREFIX``: counters of scopes whose id starts with PREFIX (all by default)."""
    await api.admin(req)
    query = parse_qs(req.scope.get("query_string", b"").decode("latin-1"))
    prefix = query.get("scope", [""])[0]
    rows = await api.accounting.limiter.counters.read(prefix)
    data = [
        {
            "scope": scope,
            "metric": metric,
            "window": window,
            "spent": spent,
            "reserved": reserved,
            **({"spent_usd": usd_text(spent), "reserved_usd": usd_text(reserved)} if metric == USD else {}),
        }
        for (scope, metric, window), spent, reserved in rows
    ]
    await _send(api, req, 200, {"object": "list", "data": data})


async def deployments(api: SluiceAPI, req: Request) -> None:
    """``/admin/deployments``: every alias's deployments and their health (as this instance sees it)."""
    await api.admin(req)
    await _send(api, req, 200, {"object": "list", "data": api.gateway.deployments()})


async def openapi(api: SluiceAPI, req: Request) -> None:
    """``/admin/openapi.json``."""
    await api.admin(req)
    await _send(api, req, 200, admin_openapi())


def provider_key_json(svc: ProviderKeys, row: ProviderKeyRow) -> dict[str, Any]:
    """A stored provider key as the API shows it: never the key, never the ciphertext."""
    return {
        "id": row.id,
        "object": "provider_key",
        "provider": row.provider,
        "label": row.label,
        "fingerprint": row.fingerprint,
        "created_at": row.created_at,
        "usable": svc.usable(row),  # false: this instance's key-encryption keys cannot open it
    }


class _NewProviderKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(..., min_length=1, max_length=128)
    key: str = Field(..., min_length=1, max_length=4096)
    label: str = Field("", max_length=128)


def _secrets(api: SluiceAPI) -> ProviderKeys:
    assert api.provider_keys is not None, "create_app sets it"
    return api.provider_keys


async def provider_keys(api: SluiceAPI, req: Request) -> None:
    """``/admin/provider-keys``: GET lists, POST stores one."""
    await api.admin(req)
    svc = _secrets(api)
    if req.scope["method"] == "POST":
        new = _validated(_NewProviderKey, await api.read_body(req), "provider key")
        row = await svc.add(new.provider, new.key, new.label)
        await _provider_keys_changed(api)
        await _send(api, req, 201, provider_key_json(svc, row))
        return
    rows = await svc.all()
    await _send(api, req, 200, {"object": "list", "data": [provider_key_json(svc, r) for r in rows]})


async def provider_key_item(api: SluiceAPI, req: Request, key_id: str) -> None:
    """``DELETE /admin/provider-keys/{id}``."""
    await api.admin(req)
    if "/" in key_id or not key_id:
        raise NotFound(f"Unknown path: {req.scope['method']} {req.scope['path']}")
    if req.scope["method"] != "DELETE":
        raise MethodNotAllowed(
            f"Method {req.scope['method']} is not allowed here; use DELETE.", headers={"allow": "DELETE"}
        )
    svc = _secrets(api)
    row = await svc.remove(key_id)
    await _provider_keys_changed(api)
    await _send(api, req, 200, {**provider_key_json(svc, row), "deleted": True})


async def _provider_keys_changed(api: SluiceAPI) -> None:
    if api.provider_keys_changed is not None:
        await api.provider_keys_changed()


class _AlertTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1, max_length=200)


def _alerts(api: SluiceAPI) -> AlertService:
    assert api.alerts is not None, "create_app sets it"
    return api.alerts


async def alerts(api: SluiceAPI, req: Request) -> None:
    """``GET /admin/alerts?limit=N``: the alert log (newest first, 100 by default, at most 1000)."""
    await api.admin(req)
    query = parse_qs(req.scope.get("query_string", b"").decode("latin-1"))
    raw = query.get("limit", ["100"])[0]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise InvalidRequest("'limit' must be an integer from 1 to 1000.", param="limit")
    rows = await _alerts(api).history(int(raw))
    await _send(api, req, 200, {"object": "list", "data": [r.public() for r in rows]})


async def alert_test(api: SluiceAPI, req: Request) -> None:
    """``POST /admin/alerts/test``: one test alert to one channel, sent now and logged (502 if refused)."""
    await api.admin(req)
    wanted = _validated(_AlertTest, await api.read_body(req), "alert test")
    row = await _alerts(api).send_test(wanted.channel)
    delivery = row.deliveries[0]
    if delivery.status != "sent":
        raise DeliveryFailed(
            f"Channel {wanted.channel!r} did not take the test alert: {delivery.last_error} "
            f"(logged as {row.id})."
        )
    await _send(api, req, 200, row.public())


async def credit_runways(api: SluiceAPI, req: Request) -> None:
    """``GET /admin/credits``: every free or trial account's runway (balances as last polled)."""
    await api.admin(req)
    found = await _alerts(api).runways()
    await _send(api, req, 200, {"object": "list", "data": [r.as_json() for r in found]})


async def alert_rules(api: SluiceAPI, req: Request) -> None:
    """``GET /admin/alert-rules``: every override, with where it comes from."""
    await api.admin(req)
    await _send(api, req, 200, {"object": "list", "data": _alerts(api).overrides()})


async def alert_rule_item(api: SluiceAPI, req: Request) -> None:
    """``PUT`` or ``DELETE /admin/alert-rules/{scope}``, the scope URL-encoded (``%2F`` for a ``/`` in
    ``deployment:openai/gpt-4o``), read from the raw path so an encoded slash stays part of it."""
    await api.admin(req)
    raw_path = req.scope.get("raw_path") or req.scope["path"].encode()
    encoded = raw_path.decode("latin-1").split("?", 1)[0].removeprefix("/admin/alert-rules/")
    scope = unquote(encoded)
    if not scope or len(scope) > 300 or not scope.isprintable() or "/" in encoded:
        raise NotFound(f"Unknown path: {req.scope['method']} {req.scope['path']}")
    service = _alerts(api)
    method = req.scope["method"]
    if method == "PUT":
        rule = _validated(AlertRuleSettings, await api.read_body(req), "alert rule")
        await service.set_override(scope, rule)
        await _send(api, req, 200, {"scope": scope, "source": "api", **rule.model_dump()})
    elif method == "DELETE":
        if not await service.drop_override(scope):
            raise NotFound(f"No alert override for {scope!r} was set through the API.", param="scope")
        await _send(api, req, 200, {"scope": scope, "deleted": True})
    else:
        raise MethodNotAllowed(
            f"Method {method} is not allowed here; use PUT or DELETE.", headers={"allow": "DELETE, PUT"}
        )


class _SmokeAsk(BaseModel):
    """What to smoke-test."""

    model_config = ConfigDict(extra="forbid")
    deployments: list[str] = Field(default_factory=list, max_length=100)
    max_usd: Decimal | None = Field(None, ge=0, max_digits=24)
    light: bool = Field(False, strict=True)


def _smoke(api: SluiceAPI) -> SmokeService:
    assert api.smoke is not None, "create_app sets it"
    return api.smoke


async def smoke(api: SluiceAPI, req: Request) -> None:
    """``POST /admin/smoke``: run now (the answer comes when the run ends), keep it, report the drift."""
    await api.admin(req)
    raw = await api.read_body(req)
    ask = _validated(_SmokeAsk, raw or b"{}", "smoke run")
    cap = int(ask.max_usd.scaleb(9)) if ask.max_usd is not None else None
    run, drift = await _smoke(api).run(ask.deployments, cap_nanos=cap, light=ask.light)
    await _send(api, req, 200, {**run.as_json(), "drift": [d.as_json() for d in drift]})


async def smoke_runs(api: SluiceAPI, req: Request) -> None:
    """``GET /admin/smoke?limit=N``: the latest runs (20 by default, at most 200)."""
    await api.admin(req)
    query = parse_qs(req.scope.get("query_string", b"").decode("latin-1"))
    raw = query.get("limit", ["20"])[0]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 200:
        raise InvalidRequest("'limit' must be an integer from 1 to 200.", param="limit")
    runs = await history.recent(_smoke(api).store, int(raw))
    await _send(api, req, 200, {"object": "list", "data": [r.as_json() for r in runs]})


async def readiness(api: SluiceAPI, req: Request) -> None:
    """``GET /admin/readiness``: the checklist of ``sluice doctor``, for this running gateway."""
    await api.admin(req)
    service = _smoke(api)
    facts = await gather(service.store, api.accounting.ledger, datetime.fromtimestamp(time.time(), UTC))
    items = checklist(service.config, api.gateway.routes, facts)
    ready = all(i.status != FAIL for i in items)
    await _send(api, req, 200, {"object": "readiness", "ready": ready, "items": [i.as_json() for i in items]})
