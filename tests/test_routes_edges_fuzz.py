"""What tests/approvals/test_routes_fuzz.py leaves out: unknown paths, other methods, oversized bodies.

Every route of app.py is fuzzed there with its own method (the approval routes and GET /health);
here every other way in: paths no route has (near misses, traversal, encodings, long ones), each
method on each path, and bodies past the size each route reads. Through chalice's test client and
app.py, against the same world (moto, the sandbox, pending approval requests): never a 5xx, never
a change. Examples: VIFGATE_FUZZ_EXAMPLES (default 200 here).

OPTIONS is left out: chalice's local gateway raises on it (its CORS handling, no route has CORS);
API Gateway answers it itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from chalice.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import runtime
from chalicelib.log import logger
from tests.approvals.test_routes_fuzz import World, approval_world, check, link_path

EXAMPLES = int(os.environ.get("VIFGATE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
ROUTES = {  # path -> the methods app.py answers on it
    "/health": {"GET"},
    "/approvals/slack": {"POST"},
    "/approvals/mattermost": {"POST"},
    "/approvals/link/TOKEN": {"GET", "POST"},
}
NEAR_MISSES = [
    "/",
    "/health/",
    "//health",
    "/HEALTH",
    "/health/x",
    "/health%00",
    "/health.json",
    "/approvals",
    "/approvals/",
    "/approvals/link",
    "/approvals/link/x/y",
    "/approvals/link/%2e%2e/%2e%2e/health",
    "/approvals/slack/",
    "/approvals/Slack",
    "/approvals/mattermost/x",
    "/api/health",
    "/" + "a" * 3000,
    "/approvals/link/" + "A" * 8000,
]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with approval_world() as built:
        yield built


@pytest.fixture
def client(world, monkeypatch) -> Client:
    from app import app

    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "get_reader", lambda env=None: world.runtime)
    logger.setLevel("WARNING")
    return Client(app)


paths = st.one_of(
    st.sampled_from(NEAR_MISSES),
    st.sampled_from(sorted(ROUTES)).map(lambda p: p.replace("TOKEN", "x")),
    st.text(max_size=60).map(lambda t: "/" + quote(t, safe="/")),
    st.lists(st.text(alphabet="abcxyz%./-_~", min_size=1, max_size=8), max_size=5).map(lambda ps: "/" + "/".join(ps)),
)
content_types = st.sampled_from(
    [None, "application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]
)


def test_any_path_and_method_never_fails_and_never_changes_anything(world, client):
    @FUZZ
    @given(method=st.sampled_from(METHODS), path=paths, content=content_types, body=st.binary(max_size=200))
    def run(method, path, content, body):
        headers = {"Content-Type": content} if content else {}
        check(world, client, method, path, headers, body)

    run()


@pytest.mark.parametrize(
    "method, path, content",
    [
        (method, path, content)
        for path, allowed in ROUTES.items()
        for method in METHODS
        if method not in allowed
        for content in (None, "application/json")
    ],
)
def test_a_route_answers_another_method_with_a_4xx(world, client, method, path, content):
    answer = check(world, client, method, path.replace("TOKEN", "x"), {"Content-Type": content} if content else {}, b"")
    assert 400 <= answer.status_code < 500, (method, path, answer.status_code)


OVERSIZED = [256 * 1024 + 1, 1024 * 1024, 6 * 1024 * 1024]  # past what a route reads; 6 MB is Lambda's payload limit


@pytest.mark.parametrize("size", OVERSIZED, ids=lambda n: f"{n // 1024}KiB")
@pytest.mark.parametrize(
    "method, path, content",
    [
        ("POST", "/approvals/slack", "application/x-www-form-urlencoded"),
        ("POST", "/approvals/mattermost", "application/json"),
        ("POST", "LINK", "application/x-www-form-urlencoded"),
        ("GET", "LINK", None),
        ("GET", "/health", None),
    ],
)
def test_an_oversized_body_is_refused_without_a_5xx(world, client, method, path, content, size):
    if path == "LINK":
        path = link_path(next(iter(world.requests.values())).request_id)  # a link-shaped path, not a valid token
    filler = b"payload=" + b"%5B" * (size // 3) if "urlencoded" in (content or "") else b"[" * size
    answer = check(world, client, method, path, {"Content-Type": content} if content else {}, filler[:size])
    assert answer.status_code < 500
    if method == "POST":
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
