"""The API's route table and its input rules, declared once: the same declarations
validate every request body and path parameter and build the OpenAPI document, so the
document cannot drift from what the server accepts.

Every string is refused when it holds CR, LF or NUL (values reach the AMI bridge and the
dialplan, where a line break would start a new AMI header), and every string has a length
cap; unknown body fields are refused rather than ignored, so a typo never silently
falls back to a default."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from outbound.errors import Invalid

CONTROL = re.compile(r"[\r\n\0]")


@dataclass(frozen=True)
class Field:
    """One body field or path parameter: JSON type, whether required, and its limits."""

    type: str = "string"  # string | boolean | integer
    required: bool = False
    max_len: int = 200
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    description: str = ""

    def check(self, name: str, value: Any) -> Any:
        """The value when valid; Invalid naming the field otherwise."""
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise Invalid(f"{name} must be true or false")
            return value
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(f"{name} must be a whole number")
            return value
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string")
        if CONTROL.search(value):
            raise Invalid(f"{name} must not contain CR, LF or NUL")
        if len(value) > self.max_len:
            raise Invalid(f"{name} must be at most {self.max_len} characters")
        if self.enum and value not in self.enum:
            raise Invalid(f"{name} must be one of: {', '.join(self.enum)}")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise Invalid(f"{name} is malformed: {self.description or self.pattern}")
        return value

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "string":
            out["maxLength"] = self.max_len
            if self.pattern:
                out["pattern"] = f"^{self.pattern}$"
            if self.enum:
                out["enum"] = list(self.enum)
        if self.description:
            out["description"] = self.description
        return out


def check_body(spec: dict[str, Field] | None, body: Any) -> dict[str, Any]:
    """The body's fields, checked against `spec` (None: the route takes no body)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    spec = spec or {}
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise Invalid(f"unknown field(s): {', '.join(unknown)[:200]}")
    out: dict[str, Any] = {}
    for name, f in spec.items():
        if name not in body or body[name] is None:
            if f.required:
                raise Invalid(f"{name} is required")
            continue
        out[name] = f.check(name, body[name])
    return out


# Path parameters: ids are bounded so that a huge number is a clean 404, never a database
# overflow error (offer and campaign ids are 32-bit integers on PostgreSQL).
INT_ID = Field(pattern=r"[0-9]{1,10}", max_len=10, description="a positive integer id")
ATTEMPT_ID = Field(pattern=r"[A-Za-z0-9-]{1,36}", max_len=36, description="a call attempt id")
NAME = Field(pattern=r"[^\x00-\x1f\x7f]{1,100}", max_len=100, description="a name or id")
PATH_PARAMS: dict[str, Field] = {
    "offer_id": INT_ID,
    "campaign_id": INT_ID,
    "callback_id": INT_ID,
    "contact_id": Field(pattern=r"[^\x00-\x1f\x7f/]{1,100}", max_len=100, description="an id"),
    "attempt_id": ATTEMPT_ID,
    "notification_id": Field(
        pattern=r"[0-9]{1,20}-[0-9]{1,20}", max_len=41, description="a notification id"
    ),
    "name": NAME,
    "event": Field(enum=("load", "start", "stop", "unload"), max_len=10),
}
MAX_DB_INT = 2**31 - 1


def path_int(value: str) -> int | None:
    """A bounded integer id, or None when larger than any row can have."""
    n = int(value)
    return n if 0 < n <= MAX_DB_INT else None


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Api:
    """One route: method, path (Starlette syntax, which is also OpenAPI's), who may call
    it, its body fields, the success answer and the error statuses it can give."""

    method: str
    path: str
    handler: Handler
    summary: str
    auth: str = "agent"  # none | session (any logged-in person) | agent | supervisor
    body: dict[str, Field] | None = None
    query: dict[str, Field] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    stream: bool = False  # text/event-stream instead of JSON
    media: str = "application/json"  # the success answer's type when not a stream

    @property
    def params(self) -> list[str]:
        return re.findall(r"{([a-z_]+)}", self.path)

    @property
    def mutating(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    def statuses(self) -> list[int]:
        """Every status the route may answer besides 200."""
        out = set(self.errors)
        if self.auth != "none":
            out |= {401}
            if self.mutating:
                out |= {403}
        if self.auth == "supervisor":
            out |= {403}
        if self.body is not None or self.params or self.query:
            out |= {422}
        return sorted(out)


_DESCRIPTIONS = {
    200: "OK",
    401: "not logged in (no or expired session)",
    403: "forbidden: missing/wrong X-CSRF-Token, not yours, or not a supervisor",
    404: "no such thing",
    409: "conflicts with the current state (or the bridge refused it)",
    413: "request body too large",
    422: "invalid input",
    429: "too many failed log-ins: retry after the Retry-After header's seconds",
    503: "a dependency (database, Redis) is unreachable",
    504: "the AMI bridge did not answer in time",
}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


def openapi(routes: list[Api], title: str = "asterisk-outbound status page API") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower())}",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": (
                        {"text/event-stream": {"schema": {"type": "string"}}}
                        if r.stream
                        else {
                            r.media: {
                                "schema": {"type": "object"}
                                if r.media == "application/json"
                                else {"type": "string"}
                            }
                        }
                    ),
                },
                **{
                    str(code): {
                        "description": _DESCRIPTIONS.get(code, "error"),
                        "content": {"application/json": {"schema": _ERROR}},
                    }
                    for code in r.statuses()
                },
            },
        }
        params = [
            {"name": p, "in": "path", "required": True, "schema": PATH_PARAMS[p].json_schema()}
            for p in r.params
        ]
        params += [
            {"name": q, "in": "query", "required": f.required, "schema": f.json_schema()}
            for q, f in r.query.items()
        ]
        if r.mutating and r.auth != "none":
            params.append(
                {
                    "name": "X-CSRF-Token",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the csrf_token the log-in answered",
                }
            )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": any(f.required for f in r.body.values()),
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {n: f.json_schema() for n, f in r.body.items()},
                            "required": [n for n, f in r.body.items() if f.required],
                        }
                    }
                },
            }
        if r.auth != "none":
            op["security"] = [{"session": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "ob_session"}}
        },
    }
