"""The command line on a damaged data directory: refused with the reason, recovered."""

from __future__ import annotations

import json

from calls_server.storage import EmbeddedStore
from calls_server.storage.journal import SNAPSHOT
from tests.conftest import cli
from tests.store.test_store_integrity import calls_query, fill, flip_digit, line_start, segments


def test_the_cli_refuses_a_damaged_directory_with_the_reason(tmp_path):
    fill(tmp_path / "data")
    (tmp_path / "data" / SNAPSHOT).unlink()

    result = cli("--data-dir", str(tmp_path / "data"), "list-keys", "org")

    assert result.returncode == 2
    assert "snapshot.json is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_recover_salvages_everything_readable_into_a_new_directory(tmp_path):
    data, target = tmp_path / "data", tmp_path / "recovered"
    fill(data, count=30, compact_every=10)
    segment = segments(data)[-1]
    offset = line_start(segment, flip_digit(segment, b'"n":'))

    result = cli("--data-dir", str(data), "recover", "--to", str(target))

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    damaged = f"{segment}: the record at byte {offset} is damaged: its checksum does not match"
    assert report["problems"][0] == damaged
    assert report["problems"][1].endswith("is missing")  # the gap the damaged record leaves
    store = EmbeddedStore(target)
    try:
        kept = {c["call_id"] for c in store.list_calls("org", calls_query())[0]}
    finally:
        store.close()
    assert len(kept) == 29  # every call but the one in the damaged record
    assert report["last_record"] == 30
