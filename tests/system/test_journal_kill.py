"""A journal writer process killed with SIGKILL: every acknowledged write survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from calls_server.storage import EmbeddedStore

WRITER = textwrap.dedent(
    """
    import sys
    from calls_server.domain import calls
    from calls_server.storage import EmbeddedStore
    store = EmbeddedStore(sys.argv[1], compact_every=int(sys.argv[2]))
    n = 0
    while True:
        call = calls.new_call(organization_id="org", agent_id="a", now=n, call_type="web_call",
                              call_id=f"c{n}", metadata={"pad": "x" * 1000})
        store.add_call(call)
        if n % 3 == 0:
            store.delete_call("org", f"c{n}")
        print(n, flush=True)
        n += 1
    """
)


@pytest.mark.parametrize("compact_every", [7, 10_000])
def test_every_acknowledged_write_survives_kill_9(tmp_path, compact_every):
    data = tmp_path / "data"
    acknowledged = -1
    for _ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data), str(compact_every)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.getcwd(),
        )
        assert writer.stdout is not None
        for _ in range(40):
            acknowledged = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()

        store = EmbeddedStore(data)
        try:
            for n in range(acknowledged + 1):
                if n % 3:
                    assert store.get_call("org", f"c{n}")["call_id"] == f"c{n}"
            # The store starts over from c0 in each run: overwrite what the next run adds.
            for call in store.list_calls("org", _everything())[0]:
                store.delete_call("org", call["call_id"])
        finally:
            store.close()


def _everything():
    from calls_server.domain.listing import CallQuery

    return CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})
