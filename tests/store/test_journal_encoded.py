"""Tables kept encoded (`journal.Encoding`): each document in memory as its JSON and a few
of its values, written to the journal as plain JSON documents, and to the snapshot (format
2) as a line of JSON each with those values beside them, so that they open without being
parsed. Snapshots of format 1 (one JSON document) still open, and are migrated."""

from __future__ import annotations

import json
import zlib

import orjson
import pytest

from calls_server.domain import calls
from calls_server.domain.listing import CallQuery
from calls_server.storage import CorruptJournal, EmbeddedStore
from calls_server.storage.embedded import write_data_directory
from calls_server.storage.journal import (
    SNAPSHOT,
    Encoding,
    JournalStorage,
    encode_record,
    salvage,
    segment_name,
)
from calls_server.storage.tinydb_table import EmbeddedTinyDB, EncodedTable, raw_documents


def kept(doc: dict) -> tuple:
    """The test encoding: the JSON, then the document's "kind" and "n"."""
    return (orjson.dumps(doc), doc.get("kind"), doc.get("n"))


ENCODINGS = {"e": Encoding(kept, repeated=frozenset({0}))}


def open_storage(directory) -> JournalStorage:
    return JournalStorage(directory, encodings=ENCODINGS)


def journal_lines(directory) -> list[dict]:
    return [
        json.loads(line.split(" ", 1)[1])
        for path in sorted(directory.glob("journal-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def write_format_1_snapshot(directory, seq: int, tables: dict) -> None:
    """A snapshot as written before format 2: one JSON document, then the trailer."""
    document = orjson.dumps({"seq": seq, "tables": tables})
    trailer = b"#crc32=%08x bytes=%d" % (zlib.crc32(document), len(document))
    (directory / SNAPSHOT).write_bytes(document + b"\n" + trailer + b"\n")


def test_an_encoded_document_is_written_to_the_journal_as_its_json(tmp_path):
    storage = open_storage(tmp_path)
    doc = {"kind": "a", "n": 1}
    storage.read().setdefault("e", {})["1"] = kept(doc)

    storage.commit([("e", "1", kept(doc))])

    assert journal_lines(tmp_path) == [{"seq": 1, "changes": [["e", "1", doc]]}]
    storage.close()


def test_encoded_documents_come_back_encoded_from_the_snapshot(tmp_path):
    storage = open_storage(tmp_path)
    docs = {str(n): {"kind": "ab"[n % 2], "n": n, "text": "line\nbreak"} for n in range(5)}
    storage.read()["e"] = {doc_id: kept(doc) for doc_id, doc in docs.items()}
    storage.read()["plain"] = {"1": {"x": 1}}
    storage.commit([("e", doc_id, kept(doc)) for doc_id, doc in docs.items()])
    storage.close()

    reopened = open_storage(tmp_path)

    assert reopened.read() == {
        "e": {doc_id: kept(doc) for doc_id, doc in docs.items()},
        "plain": {"1": {"x": 1}},
    }
    reopened.close()


def test_a_snapshot_holds_the_encoded_documents_a_line_each_after_their_values(tmp_path):
    storage = open_storage(tmp_path)
    storage.read()["e"] = {"7": kept({"kind": "a", "n": 3})}
    storage.commit([("e", "7", kept({"kind": "a", "n": 3}))])
    storage.close()

    lines = (tmp_path / SNAPSHOT).read_bytes().split(b"\n")

    assert json.loads(lines[0]) == {
        "seq": 1,
        "format": 2,
        "tables": {},
        "encoded": {"e": {"ids": ["7"], "columns": [{"values": ["a"], "codes": [0]}, [3]]}},
    }
    assert lines[1] == b'{"kind":"a","n":3}'
    assert lines[2].startswith(b"#crc32=")


def test_repeated_values_are_one_object_each_once_opened(tmp_path):
    storage = open_storage(tmp_path)
    storage.read()["e"] = {str(n): kept({"kind": f"kind-{n % 2}", "n": n}) for n in range(4)}
    storage.commit([("e", "0", storage.read()["e"]["0"])])
    storage.close()

    reopened = open_storage(tmp_path)
    kinds = [doc[1] for doc in reopened.read()["e"].values()]

    assert kinds[0] is kinds[2]
    assert kinds[1] is kinds[3]
    reopened.close()


def test_journal_records_after_the_snapshot_are_replayed_encoded(tmp_path):
    storage = open_storage(tmp_path)
    storage.read()["e"] = {"1": kept({"kind": "a", "n": 1})}
    storage.commit([("e", "1", kept({"kind": "a", "n": 1}))])
    storage.close()  # a snapshot of record 1
    with open(tmp_path / segment_name(2), "ab") as f:
        f.write(encode_record(2, [("e", "2", {"kind": "b", "n": 2}), ("e", "1", None)]))

    reopened = open_storage(tmp_path)

    assert reopened.read() == {"e": {"2": kept({"kind": "b", "n": 2})}}
    reopened.close()


def test_a_format_1_snapshot_opens_encoded_and_is_replaced_by_format_2(tmp_path):
    write_format_1_snapshot(tmp_path, 1, {"e": {"1": {"kind": "a", "n": 1}}, "p": {"1": {}}})
    (tmp_path / segment_name(2)).write_bytes(encode_record(2, [("e", "2", {"kind": "b"})]))

    storage = open_storage(tmp_path)
    assert storage.read() == {
        "e": {"1": kept({"kind": "a", "n": 1}), "2": kept({"kind": "b"})},
        "p": {"1": {}},
    }
    storage.close()

    assert json.loads((tmp_path / SNAPSHOT).read_bytes().split(b"\n")[0])["format"] == 2
    reopened = open_storage(tmp_path)
    assert reopened.read()["e"] == {"1": kept({"kind": "a", "n": 1}), "2": kept({"kind": "b"})}
    reopened.close()


def test_a_format_2_snapshot_opens_plain_without_the_encoding(tmp_path):
    storage = open_storage(tmp_path)
    storage.read()["e"] = {"1": kept({"kind": "a", "n": 1})}
    storage.commit([("e", "1", kept({"kind": "a", "n": 1}))])
    storage.close()

    plain = JournalStorage(tmp_path)

    assert plain.read() == {"e": {"1": {"kind": "a", "n": 1}}}
    plain.close()


def test_salvage_copies_encoded_documents_as_plain_ones(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    storage = open_storage(source)
    storage.read()["e"] = {"1": kept({"kind": "a", "n": 1})}
    storage.commit([("e", "1", kept({"kind": "a", "n": 1}))])
    storage.close()

    report = salvage(source, target)

    assert report["problems"] == []
    salvaged = open_storage(target)
    assert salvaged.read() == {"e": {"1": kept({"kind": "a", "n": 1})}}
    salvaged.close()


def test_a_snapshot_missing_encoded_lines_is_refused(tmp_path):
    storage = open_storage(tmp_path)
    storage.read()["e"] = {"1": kept({"kind": "a"}), "2": kept({"kind": "b"})}
    storage.commit([("e", "1", kept({"kind": "a"}))])
    storage.close()
    lines = (tmp_path / SNAPSHOT).read_bytes().split(b"\n")
    document = b"\n".join(lines[:2])  # the second document's line left out
    trailer = b"#crc32=%08x bytes=%d" % (zlib.crc32(document), len(document))
    (tmp_path / SNAPSHOT).write_bytes(document + b"\n" + trailer + b"\n")

    with pytest.raises(CorruptJournal, match="lacks documents"):
        open_storage(tmp_path)


def test_an_encoded_table_stores_what_the_encoding_makes_of_each_document(tmp_path):
    db = EmbeddedTinyDB(tmp_path, storage=JournalStorage, encodings=ENCODINGS)
    table = db.table("e")
    assert isinstance(table, EncodedTable)

    first = table.insert({"kind": "a", "n": 1})
    table.replace(first, {"kind": "b", "n": 2})
    second = table.insert_stored(kept({"kind": "c"}))

    assert raw_documents(table) == {
        str(first): kept({"kind": "b", "n": 2}),
        str(second): kept({"kind": "c"}),
    }
    db.close()


NEWEST_TEN = CallQuery.from_body(
    {"page": 0, "limit": 10, "sort_by": "created_at", "sort_order": "descending"}
)


def call(n: int) -> calls.Call:
    return calls.new_call(
        organization_id="acme",
        agent_id="agent",
        now=1_700_000_000_000 + n,
        call_type="phone_call",
        direction="outbound",
        from_number="+14155550100",
        to_number="+14155550101",
        metadata={"n": n},
    )


def test_a_store_written_in_format_1_opens_with_its_calls_listed_and_read(tmp_path):
    made = [call(n) for n in range(3)]
    organization = {"organization_id": "acme", "name": "Acme", "created_at": 0}
    write_format_1_snapshot(
        tmp_path,
        0,
        {
            "organizations": {"1": organization},
            "calls": {str(n + 1): c for n, c in enumerate(made)},
        },
    )

    store = EmbeddedStore(tmp_path)

    page = store.list_calls("acme", NEWEST_TEN)

    assert [c["call_id"] for c in page.calls] == [c["call_id"] for c in reversed(made)]
    assert store.get_call("acme", made[1]["call_id"]) == made[1]
    store.close()
    reopened = EmbeddedStore(tmp_path)
    assert reopened.get_call("acme", made[2]["call_id"]) == made[2]
    reopened.close()


def test_a_data_directory_written_for_a_store_opens_with_its_calls(tmp_path):
    made = [call(n) for n in range(3)]
    organization = {"organization_id": "acme", "name": "Acme", "created_at": 0}
    write_data_directory(
        tmp_path,
        {
            "organizations": {"1": organization},
            "calls": {str(n + 1): c for n, c in enumerate(made)},
        },
    )

    store = EmbeddedStore(tmp_path)

    assert [c["call_id"] for c in store.list_calls("acme", NEWEST_TEN).calls] == [
        c["call_id"] for c in reversed(made)
    ]
    store.close()


def test_a_whole_database_write_keeps_encoded_documents_across_a_reopen(tmp_path):
    # TinyDB's drop_table hands the storage every remaining table at once (a "*" record).
    db = EmbeddedTinyDB(tmp_path, storage=JournalStorage, encodings=ENCODINGS)
    db.table("e").insert({"kind": "a", "n": 1})
    db.table("other").insert({"x": 1})

    db.drop_table("other")
    db.storage.abandon()  # no final snapshot: the "*" record is replayed

    reopened = open_storage(tmp_path)
    assert reopened.read() == {"e": {"1": kept({"kind": "a", "n": 1})}}
    reopened.close()
