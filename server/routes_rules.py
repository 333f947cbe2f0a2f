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
config loader's own checks run on every body and the stream's analytics checks the class names
against the model's: anything wrong is a 422 that says what. A change applies from the
stream's next frame; an unchanged rule keeps its counts, a replaced one starts from zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel

from analytics.rules import LineRule, ZoneRule
from pipeline.config import parse_section
from pipeline.live import LivePipeline
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


def rules_router(pipeline: Callable[[], LivePipeline], access: Access) -> APIRouter:
    """The routes above; ``pipeline()`` gives the live pipeline (or raises 503), ``access`` the
    app's read and mutation dependencies (auth, rate limit) and the statuses they can send."""
    router = APIRouter(prefix="/api/streams/{stream_id}", tags=["rules"])
    reads, changes = access.reads, access.changes
    read_doc, change_doc = access.read_responses, access.change_responses

    def current(stream_id: str) -> tuple[tuple[LineRule, ...], tuple[ZoneRule, ...]]:
        a = pipeline().analytics(stream_id)
        if a is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return a.rules

    def apply(stream_id: str, lines: tuple[LineRule, ...], zones: tuple[ZoneRule, ...]) -> None:
        try:
            pipeline().set_rules(stream_id, lines, zones)  # VigilError -> 422 (the app's handler)
        except KeyError:
            raise HTTPException(404, f"no stream {stream_id!r}") from None

    def all_rules(stream_id: str) -> dict[str, list[dict[str, Any]]]:
        lines, zones = current(stream_id)
        return {"lines": [rule_dict(r) for r in lines], "zones": [rule_dict(r) for r in zones]}

    @router.get("/rules", dependencies=reads, responses=read_doc(404))
    async def get_rules(stream_id: str) -> dict[str, list[dict[str, Any]]]:
        return all_rules(stream_id)

    @router.put("/rules", dependencies=changes, responses=change_doc(400, 404, 413))
    async def put_rules(stream_id: str, body: RulesIn) -> dict[str, list[dict[str, Any]]]:
        current(stream_id)
        lines = tuple(_parse(LineRule, x) for x in body.lines)
        zones = tuple(_parse(ZoneRule, x) for x in body.zones)
        apply(stream_id, lines, zones)
        return all_rules(stream_id)

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
    current: Callable[[str], tuple[tuple[LineRule, ...], tuple[ZoneRule, ...]]],
    apply: Callable[[str, tuple[LineRule, ...], tuple[ZoneRule, ...]], None],
    access: Access,
) -> None:
    """List/create/read/replace/delete routes of one kind of rule (``lines`` or ``zones``)."""
    index = 0 if kind == "lines" else 1

    def replaced(stream_id: str, rules: tuple[Any, ...]) -> None:
        lines, zones = current(stream_id)
        apply(stream_id, *((rules, zones) if index == 0 else (lines, rules)))

    def find(stream_id: str, rule_id: str) -> tuple[tuple[Any, ...], int]:
        rules: tuple[Any, ...] = current(stream_id)[index]
        at = next((i for i, r in enumerate(rules) if r.id == rule_id), -1)
        if at < 0:
            raise HTTPException(404, f"stream {stream_id!r} has no {kind[:-1]} {rule_id!r}")
        return rules, at

    async def list_rules(stream_id: str) -> list[dict[str, Any]]:
        return [rule_dict(r) for r in current(stream_id)[index]]

    async def create(stream_id: str, body: BaseModel) -> dict[str, Any]:
        rule = _parse(cls, body)
        lines, zones = current(stream_id)
        if rule.id in [r.id for r in lines] + [r.id for r in zones]:
            raise HTTPException(409, f"stream {stream_id!r} already has a rule {rule.id!r}")
        replaced(stream_id, (*(lines, zones)[index], rule))
        return rule_dict(rule)

    async def get(stream_id: str, rule_id: str) -> dict[str, Any]:
        rules, at = find(stream_id, rule_id)
        return rule_dict(rules[at])

    async def replace(stream_id: str, rule_id: str, body: BaseModel) -> dict[str, Any]:
        rule = _parse(cls, body)
        if rule.id != rule_id:
            raise HTTPException(422, f"the body's id {rule.id!r} is not {rule_id!r}")
        rules, at = find(stream_id, rule_id)
        replaced(stream_id, (*rules[:at], rule, *rules[at + 1 :]))
        return rule_dict(rule)

    async def delete(stream_id: str, rule_id: str) -> Response:
        rules, at = find(stream_id, rule_id)
        replaced(stream_id, (*rules[:at], *rules[at + 1 :]))
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
