"""The API's OpenAPI document tells the truth about the mounted app, and its input rules
refuse what must never reach the bridge."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Route

from outbound.config import load_config
from outbound.errors import Invalid
from status_page.app import ROUTES, create_app, openapi_document
from status_page.calls import ACTIONS
from status_page.schema import PATH_PARAMS, Field, check_body


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("api")
    cfg = load_config(env={}, cwd=Path(tmp), overrides={"database.url": f"sqlite:///{tmp}/x.db"})
    app = create_app(cfg)  # nothing connects until a request comes
    out = []
    for r in app.routes:
        assert isinstance(r, Route)
        for m in r.methods or ():
            if m != "HEAD":
                out.append((m, r.path))
    return out


def test_every_mounted_route_is_in_the_document_with_its_method(
    mounted: list[tuple[str, str]],
) -> None:
    paths = openapi_document()["paths"]
    assert len(mounted) == len(ROUTES) == len(set(mounted))
    for method, path in mounted:
        assert method.lower() in paths.get(path, {}), f"{method} {path} missing"
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert documented == set(mounted)


def test_every_route_documents_its_body_parameters_and_errors() -> None:
    paths = openapi_document()["paths"]
    for api in ROUTES:
        op = paths[api.path][api.method.lower()]
        if api.body is None:
            assert "requestBody" not in op, api.path
        else:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema["properties"]) == set(api.body), api.path
            assert schema["additionalProperties"] is False
        names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert names == set(re.findall(r"{([a-z_]+)}", api.path)), api.path
        assert names <= set(PATH_PARAMS)
        codes = set(op["responses"])
        assert "200" in codes
        if api.auth != "none":
            assert "401" in codes, api.path
            assert op["security"] == [{"session": []}]
        if api.mutating and api.auth != "none":
            assert "403" in codes, api.path  # CSRF
            assert any(p["name"] == "X-CSRF-Token" for p in op["parameters"]), api.path


def test_every_call_action_of_the_bridge_has_its_route() -> None:
    paths = openapi_document()["paths"]
    for action in [*ACTIONS, "done"]:
        assert "post" in paths[f"/api/calls/{{attempt_id}}/{action}"]


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\0b", "2001\r\nAction: Hangup"])
def test_given_a_control_character_then_every_string_field_refuses_it(value: str) -> None:
    with pytest.raises(Invalid, match="CR, LF or NUL"):
        Field(max_len=100).check("x", value)
    for name, f in PATH_PARAMS.items():
        with pytest.raises(Invalid):
            f.check(name, value)


def test_given_a_body_then_types_lengths_enums_and_unknown_fields_are_checked() -> None:
    spec = {
        "choice": Field(required=True, enum=("later", "dnc")),
        "stop": Field(type="boolean"),
        "code": Field(max_len=3),
    }
    assert check_body(spec, {"choice": "later"}) == {"choice": "later"}
    assert check_body(spec, {"choice": "dnc", "stop": False, "code": None}) == {
        "choice": "dnc",
        "stop": False,
    }
    for bad, why in (
        ({}, "required"),
        ({"choice": "maybe"}, "one of"),
        ({"choice": "later", "stop": 1}, "true or false"),
        ({"choice": "later", "code": "abcd"}, "at most 3"),
        ({"choice": "later", "code": 7}, "string"),
        ({"choice": "later", "admin": True}, "unknown field"),
        (["later"], "JSON object"),
    ):
        with pytest.raises(Invalid, match=why):
            check_body(spec, bad)
