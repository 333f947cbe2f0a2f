"""REST for a stream's lines and zones, changed while it runs (every change needs an API key).

    GET    /api/streams/{sid}/rules                 {"lines": [...], "zones": [...]}
    PUT    /api/streams/{sid}/rules                 replace every line and zone at once
    GET    /api/streams/{sid}/{lines|zones}         the list
    POST   /api/streams/{sid}/{lines|zones}         create (201; 409 if the id is taken)
    GET    /api/streams/{sid}/{lines|zones}/{id}    one rule (404 if absent)
    PUT    /api/streams/{sid}/{lines|zones}/{id}    replace it (404 if absent)
    DELETE /api/streams/{sid}/{lines|zones}/{id}    204

Bodies have the config's schema (``analytics.rules``: normalized coordinates in 0..1, a line's 2
points, a polygon's 3 to 64 points with at least 3 distinct and an area, known anchors); the
config loader's own checks run on every body and the rules are checked against the model's
class names: anything wrong is a 422 that says what, and changes nothing. An unchanged rule
keeps its counts, a replaced one starts from zero.

The routes work on any :class:`server.backend.StreamBackend` through ``rules`` and
``edit_rules`` (one atomic read-modify-write per request: of two concurrent edits neither is
lost). ``vigil serve`` applies a change from the stream's next frame; a ``vigil gateway``
writes it into the camera's spec in the desired state (Redis) and answers once it is written:
the owning worker applies it live at its next control round (``cluster.claim_interval_s``),
keeping the camera, its tracks and counts; a camera nobody owns starts with it. With Redis away
a gateway answers 503 and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel

from analytics.rules import LineRule, ZoneRule
from pipeline.config import parse_section
from server.backend import RuleEdit, Rules, StreamBackend
from server.errors import Access
from server.schema import rest_model

LineIn = rest_model(LineRule, "LineIn")
ZoneIn = rest_model(ZoneRule, "ZoneIn")


class RulesIn(BaseModel):
    model_config = {"extra": "forbid"}
    lines: list[LineIn] = []  # type: ignore[valid-type]
    zones: list[ZoneIn] = []  # type: ignore[valid-type]


def rule_dict(rule: LineRule | ZoneRule) -> dict[str, Any]:
    d = asdict(rule)
    for key in ("points", "polygon", "classes"):
        if key in d:
            d[key] = [list(p) if isinstance(p, tuple) else p for p in d[key]]
    return d


def rules_dict(rules: Rules) -> dict[str, list[dict[str, Any]]]:
    lines, zones = rules
    return {"lines": [rule_dict(r) for r in lines], "zones": [rule_dict(r) for r in zones]}


def rules_router(backend: Callable[[], StreamBackend], access: Access) -> APIRouter:
    """The routes above; ``backend()`` gives the stream backend (or raises 503), ``access`` the
    app's read and mutation dependencies (auth, rate limit) and the statuses they can send."""
    router = APIRouter(prefix="/api/streams/{stream_id}", tags=["rules"])
    reads, changes = access.reads, access.changes
    read_doc, change_doc = access.read_responses, access.change_responses

    def current(stream_id: str) -> Rules:
        found = backend().rules(stream_id)
        if found is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return found

    async def apply(stream_id: str, edit: RuleEdit) -> Rules:
        """One atomic edit, off the loop (a gateway's talks to Redis). HTTPException raised by
        ``edit``, VigilError (422) and BackendUnavailable (503) pass through."""
        b = backend()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, b.edit_rules, stream_id, edit)
        except KeyError:
            raise HTTPException(404, f"no stream {stream_id!r}") from None

    @router.get("/rules", dependencies=reads, responses=read_doc(404))
    async def get_rules(stream_id: str) -> dict[str, list[dict[str, Any]]]:
        return rules_dict(current(stream_id))

    @router.put("/rules", dependencies=changes, responses=change_doc(400, 404, 413))
    async def put_rules(stream_id: str, body: RulesIn) -> dict[str, list[dict[str, Any]]]:
        lines = tuple(_parse(LineRule, x) for x in body.lines)
        zones = tuple(_parse(ZoneRule, x) for x in body.zones)
        return rules_dict(await apply(stream_id, lambda _: (lines, zones)))

    for kind, cls, model in (("lines", LineRule, LineIn), ("zones", ZoneRule, ZoneIn)):
        _crud(router, kind, cls, model, current, apply, access)
    return router


def _parse(cls: type, body: Any) -> Any:
    """The config loader's own check of one rule body (VigilError -> 422)."""
    data = cast(BaseModel, body).model_dump()
    return parse_section(cls, data, f"{cls.__name__}: ")


def _crud(
    router: APIRouter,
    kind: str,
    cls: type,
    model: type[BaseModel],
    current: Callable[[str], Rules],
    apply: Callable[[str, RuleEdit], Any],
    access: Access,
) -> None:
    """List/create/read/replace/delete routes of one kind of rule (``lines`` or ``zones``)."""
    index = 0 if kind == "lines" else 1

    def with_kind(rules: Rules, mine: tuple[Any, ...]) -> Rules:
        return (mine, rules[1]) if index == 0 else (rules[0], mine)

    def find(stream_id: str, rules: Rules, rule_id: str) -> int:
        mine: tuple[Any, ...] = rules[index]
        at = next((i for i, r in enumerate(mine) if r.id == rule_id), -1)
        if at < 0:
            raise HTTPException(404, f"stream {stream_id!r} has no {kind[:-1]} {rule_id!r}")
        return at

    async def list_rules(stream_id: str) -> list[dict[str, Any]]:
        return [rule_dict(r) for r in current(stream_id)[index]]

    async def create(stream_id: str, body: BaseModel) -> dict[str, Any]:
        rule = _parse(cls, body)

        def add(rules: Rules) -> Rules:
            if rule.id in [r.id for r in rules[0]] + [r.id for r in rules[1]]:
                raise HTTPException(409, f"stream {stream_id!r} already has a rule {rule.id!r}")
            return with_kind(rules, (*rules[index], rule))

        await apply(stream_id, add)
        return rule_dict(rule)

    async def get(stream_id: str, rule_id: str) -> dict[str, Any]:
        rules = current(stream_id)
        return rule_dict(rules[index][find(stream_id, rules, rule_id)])

    async def replace(stream_id: str, rule_id: str, body: BaseModel) -> dict[str, Any]:
        rule = _parse(cls, body)
        if rule.id != rule_id:
            raise HTTPException(422, f"the body's id {rule.id!r} is not {rule_id!r}")

        def swap(rules: Rules) -> Rules:
            at, mine = find(stream_id, rules, rule_id), rules[index]
            return with_kind(rules, (*mine[:at], rule, *mine[at + 1 :]))

        await apply(stream_id, swap)
        return rule_dict(rule)

    async def delete(stream_id: str, rule_id: str) -> Response:
        def drop(rules: Rules) -> Rules:
            at, mine = find(stream_id, rules, rule_id), rules[index]
            return with_kind(rules, (*mine[:at], *mine[at + 1 :]))

        await apply(stream_id, drop)
        return Response(status_code=204)

    # The body's model is built at run time: give FastAPI the class, not a name to look up.
    create.__annotations__["body"] = replace.__annotations__["body"] = model
    one = f"/{kind}/{{rule_id}}"
    reads, changes = access.reads, access.changes
    read_doc = access.read_responses(404)
    router.get(f"/{kind}", dependencies=reads, responses=read_doc, name=f"list {kind}")(list_rules)
    router.post(f"/{kind}", status_code=201, dependencies=changes, name=f"create {kind}",
                responses=access.change_responses(400, 404, 409, 413))(create)  # fmt: skip
    router.get(one, dependencies=reads, responses=read_doc, name=f"get {kind}")(get)
    router.put(one, dependencies=changes, name=f"replace {kind}",
               responses=access.change_responses(400, 404, 413))(replace)  # fmt: skip
    gone = access.change_responses(404)
    router.delete(one, status_code=204, dependencies=changes, name=f"delete {kind}",
                  response_class=Response, responses=gone)(delete)  # fmt: skip
