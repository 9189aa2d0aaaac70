"""The README's routes table names every route of the app, and nothing else (issue #14)."""
from __future__ import annotations

import re
from pathlib import Path

from litestar.routes import HTTPRoute

from api.app import create_app
from keel.bootstrap import build
from tests.conftest import fresh_sqlite_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_the_routes_table_lists_every_route(tmp_path: Path) -> None:
    section = README.read_text().split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    documented = {(m, _normalise(p)) for m, p in re.findall(r"^\| `(GET|POST|DELETE|PUT|PATCH) ([^`]+)` \|", section, re.MULTILINE)}
    container = build(fresh_sqlite_settings(tmp_path), start_writer=False)
    try:
        app = create_app(container)
        served = {
            (method, _normalise(route.path))
            for route in app.routes
            if isinstance(route, HTTPRoute) and not route.path.startswith("/schema")
            for method in route.methods
            if method not in ("HEAD", "OPTIONS")
        }
    finally:
        container.close()
    served.add(("GET", "/schema"))
    assert served - documented == set(), "routes missing from the README's table"
    assert documented - served == set(), "README rows for routes the app does not serve"
