"""The console's files as the app serves them (calls_server/console.py), in-process; the
console itself is driven in a browser by tests/ecosystem/test_console.py."""

from __future__ import annotations

import re

import pytest

from tests.conftest import app_client


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir) as test_client:
        yield test_client


def script_path(client) -> str:
    page = client.get("/console/").text
    found = re.search(r'src="(?:\./|/console/)?(console-[A-Z0-9]{8}\.js)"', page)
    assert found is not None, page
    return f"/console/{found.group(1)}"


def test_the_page_is_revalidated_and_its_script_kept_for_good(client):
    page = client.get("/console/")
    script = client.get(script_path(client))

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_an_unchanged_page_is_answered_304(client):
    etag = client.get("/console/").headers["etag"]

    again = client.get("/console/", headers={"If-None-Match": etag})

    assert again.status_code == 304
    assert again.content == b""


def test_a_script_is_sent_gzipped_to_who_accepts_it(client):
    path = script_path(client)

    zipped = client.get(path, headers={"Accept-Encoding": "gzip"})
    plain = client.get(path, headers={"Accept-Encoding": "identity"})

    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # decoded by the client
    assert "content-encoding" not in plain.headers


def test_head_sends_the_headers_alone(client):
    response = client.head("/console/")

    assert response.status_code == 200
    assert response.content == b""


def test_the_console_without_its_slash_is_redirected_and_other_methods_refused(client):
    redirected = client.get("/console", follow_redirects=False)
    posted = client.post("/console/")
    missing = client.get("/console/nothing.js")

    assert (redirected.status_code, redirected.headers["location"]) == (308, "/console/")
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET, HEAD")
    assert missing.status_code == 404


def test_switched_off_the_console_is_not_served(store, data_dir):
    with app_client(store, data_dir=data_dir, console=False) as client:
        assert client.get("/console/").status_code == 404
