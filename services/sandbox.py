"""The sandbox dialer: calls that play out without a telephone network (CALLS_SANDBOX).

It accepts every phone call it is handed, as a real dialer would (the call goes
`ongoing`), and plays web calls too (a participant joins after a second). After the call's
duration it ends the call through the normal update path (`domain.calls.update`), so the
events, webhooks and lifecycle are exactly those a real dialer's updates produce. The end
carries what a real call leaves behind, shaped as upstream's call object: timestamps and
duration, a transcript whose entries (`assistant` and `user`) carry a `timestamp` and word
timings in milliseconds, `latency`, an analysis, a cost, a `recording_url` this server
serves (a WAV as long as the call) and a disconnection reason. A call never answered (no
answer, busy, failed) has no start and no duration, no transcript, recording or latency.

What happens is scripted per call through its metadata, or drawn from a generator seeded
with CALLS_SANDBOX_SEED and the call's place in the order of creation (see `draw_key`), so
that the same seed and the same requests in the same order play the same calls the same
way:

- `sandbox_outcome`: `completed` (ended, `user_hangup`), `voicemail` (ended,
  `voicemail_reached`), `no_answer` (ended, `dial_no_answer`, nothing said), `busy`
  (ended, `dial_busy`), `failed` (error, `dial_failed`); a comma-separated list scripts a
  batch task's attempts in turn. A web call has no voicemail and no busy line: it is
  `completed`, `no_answer` (nobody joins) or `failed`; the other two are ignored on it,
  as unknown values are;
- `sandbox_duration_ms`: how long the call lasts once answered (or rings, unanswered).

A batch call (domain/batches.py) takes both from its task's `dynamic_variables` too.

`time_scale` shortens every wait (0.001: a two-minute call ends after 0.12 s), for tests.
What is recorded is what was played: such a call lasts 120 ms (`call_duration`), its words
are spread over those 120 ms, its cost is that of 120 ms and its recording that long.

The play-out lives in the memory of the process: a call under way when its process stops
(a `kill -9`, a restart) is played no further. Whoever follows it ends it (`cut_off`, in
`error` with `error_unknown`, the event saying why): the batch dispatcher does so for the
batch calls whose dialing process no longer serves the store; the scheduler for the
others. So that it can tell, the sandbox records on every other call, durably and before
playing it, that its process plays it (`calls.played_by`; `Store.abandoned_sandbox_calls`
finds those whose process stopped), with the call's draw. A batch call is followed by its
task, which records the process that dialed it: it is not recorded again on the call.

A second dial of a call the sandbox is playing plays nothing more (its call id is the
Idempotency-Key a real dialer would honour), so a dial whose outcome a restart lost may be
made again.

An answered call's `recording_url` carries its organization and a random token of its
own (`?organization_id=...&token=...`): the recording is served only for a call that
exists and holds that URL.

The sandbox also stands in for the carrier of imported numbers (`validate_import`): an
import is validated as upstream answers a successful validation, but for the numbers that
script a failed one (`FAILED_VALIDATIONS`).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import io
import itertools
import logging
import math
import random
import secrets
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from calls_server.domain import calls
from calls_server.domain.errors import ApiError, CallNotFound, Conflict
from calls_server.domain.faults import FaultRules
from calls_server.domain.listing import CallQuery
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.dialer import DialOutcome
from calls_server.services import test_clocks
from calls_server.services.claimants import Claimants
from calls_server.storage.interface import (
    BatchRecords,
    CallRecords,
    Processes,
    SandboxPlayers,
)


class SandboxStore(CallRecords, BatchRecords, SandboxPlayers, Processes, Protocol):
    """What the sandbox dialer needs of the store."""


log = logging.getLogger("calls_server.sandbox")

OUTCOMES = ("completed", "voicemail", "no_answer", "busy", "failed")
# How often each outcome is drawn when the call's metadata names none.
WEIGHTS = (70, 10, 10, 5, 5)
# A web call's: its participant joins, or never does, or the connection fails.
WEB_OUTCOMES = ("completed", "no_answer", "failed")
WEB_WEIGHTS = (70, 10, 5)
ANSWERED = ("completed", "voicemail")
REASONS = {
    "completed": "user_hangup",
    "voicemail": "voicemail_reached",
    "no_answer": "dial_no_answer",
    "busy": "dial_busy",
    "failed": "dial_failed",
}
JOIN_DELAY_MS = 1000  # a web call's participant joins after this long (scaled)
COST_PER_MINUTE = 0.07  # combined_cost of a minute answered
SCRIPT = (
    ("assistant", "Hello, this is your assistant calling. How can I help you today?"),
    ("user", "Hi, I would like to check on my order please."),
    ("assistant", "Of course. I can see it shipped this morning and arrives tomorrow."),
    ("user", "Great, thank you so much."),
    ("assistant", "You are welcome. Have a good day!"),
)
VOICEMAIL = (
    ("assistant", "Hello, this is your assistant. Please call us back at your convenience."),
)
# How a call the sandbox of a stopped process was playing ends: upstream's reason for an
# error it does not name, the event saying what happened.
CUT_OFF_REASON = "error_unknown"
CUT_OFF_WHY = "the sandbox dialer playing the call stopped with its process (restart or kill)"
# Numbers whose import the sandbox's carrier refuses, and why (Twilio's own test numbers
# for an invalid number and for one the account does not own).
FAILED_VALIDATIONS = {
    "+15005550001": "the carrier reports it as an invalid phone number",
    "+15005550007": "it is not a number of the carrier account given (account_sid)",
}
VALIDATED = "Phone number validated successfully"
# How many pages of an organization's newest calls are searched for the last draw made,
# when a process plays its first call of that organization.
RESUME_PAGES = 20


@dataclass(frozen=True)
class Plan:
    """How one call plays out."""

    outcome: str  # one of OUTCOMES
    duration_ms: int  # drawn or scripted: how long it talks once answered, or rings
    played_ms: int  # that, scaled by the time scale: how long it lasts here (recorded)
    key: str  # what its draw is keyed on (`draw_key`)


class SandboxDialer:
    """A `Dialer` that plays every call out by itself, on one thread of its own."""

    idempotent = True  # a call it is playing is not played twice

    def __init__(
        self,
        store: SandboxStore,
        recordings_url: str,
        seed: int = 0,
        time_scale: float = 1.0,
        clock: Clock = wall_clock,
        faults: FaultRules | None = None,
    ) -> None:
        self.store = store
        self._claimants = Claimants(store)
        self.faults = faults  # the dial faults organizations ordered
        self.recordings_url = recordings_url.rstrip("/")
        self.seed = seed
        self.time_scale = time_scale
        self.clock = clock
        self._due: list[tuple[float, int, str, str, str]] = []  # (when, tie, step, org, call)
        # Organizations on a frozen test clock: their steps, at their clock's times (ms).
        self._frozen_due: dict[str, list[tuple[int, int, str, str]]] = {}  # (when, tie, step, call)
        self._playing: set[str] = set()  # the call ids it has steps of
        self._tie = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sandbox-dialer", daemon=True)
        self._draws: dict[str, int] = {}  # organization -> its next call's draw
        self._places: OrderedDict[str, tuple[int, dict[str, int]]] = OrderedDict()
        self._keys = threading.Lock()
        self._waits: dict[str, int] = {}  # call id -> ends put off (dial not recorded yet)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop playing; calls still under way stay as they are."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        """Accept the phone call of `job` (a dialer job) and play it out from now, unless it
        is playing it already (a dial made again under the same key)."""
        with self._wake:
            again = job["call_id"] in self._playing
        rule = self.faults.draw(job["organization_id"], outbound="dial") if self.faults else None
        if rule is not None:
            what = "no answer" if rule.action == "timeout" else "refused"
            return DialOutcome(False, f"{what} (sandbox fault {rule.fault_id})", 1)
        if not again:
            org, call_id = job["organization_id"], job["call_id"]
            if "batch_call_id" in job["metadata"]:  # a batch call's task records it
                key = self.draw_key(job)
            else:
                draw = self._next_draw(org)
                self._mark(org, call_id, draw)
                key = f"call:{draw}"
            self._after(self.plan(job, key).played_ms, "end", org, call_id)
        return DialOutcome(True, "accepted by the sandbox dialer", 1)

    def cut_off(
        self, organization_id: str, call_id: str, played_by: str | None = None
    ) -> calls.Call:
        """End the call under way that the sandbox of a stopped process was playing (this
        one never will): `error`, `error_unknown`, its event saying why. Conflict if the
        call is no longer under way, or (`played_by` given) no longer played by that
        process."""
        now = self.clock()

        def end(call: calls.Call) -> calls.Call:
            if played_by is not None and calls.player(call) != played_by:
                raise Conflict(
                    f"Call '{call_id}' is not played by the sandbox of process {played_by}",
                    message="Call is not under way",
                )
            return calls.cut_off(call, CUT_OFF_REASON, CUT_OFF_WHY, now)

        return self.store.change_call(organization_id, call_id, end)

    def cut_off_abandoned(self) -> int:
        """End every call under way that the sandbox of a process no longer serving the
        store was playing (`cut_off`); how many were ended."""
        ended = 0
        live = self._claimants.live()
        for organization_id, call_id, process in self.store.abandoned_sandbox_calls():
            if not self._claimants.stopped(process, live):  # a failover's presence gap
                continue
            try:
                self.cut_off(organization_id, call_id, played_by=process)
                ended += 1
            except ApiError as e:  # ended meanwhile (a PUT, or another process's cut)
                log.debug("sandbox: not cutting off %s: %s", call_id, e.error)
        if ended:
            log.warning("sandbox: ended %d calls left under way by a stopped process", ended)
        return ended

    def play_web_call(self, call: Mapping[str, Any]) -> None:
        """Play out a new web call: its participant joins, then it ends; or nobody joins
        (or the connection fails) and it ends unanswered."""
        org, call_id = call["organization_id"], call["call_id"]
        draw = self._next_draw(org)
        self._mark(org, call_id, draw)
        plan = self.plan(call, f"call:{draw}")
        if plan.outcome in ANSWERED:
            self._after(round(JOIN_DELAY_MS * self.time_scale), "join", org, call_id)
        else:
            self._after(plan.played_ms, "end", org, call_id)

    def _mark(self, organization_id: str, call_id: str, draw: int) -> None:
        """Record on the call, before playing it, that this process's sandbox plays it, and
        its draw (a call not stored, deleted meanwhile, has nothing to record: its play-out
        finds nothing either)."""
        me, now = self.store.process_id, self.clock()
        try:
            self.store.change_call(
                organization_id,
                call_id,
                lambda call: calls.played_by(call, me, now, {"sandbox_draw": draw}),
            )
        except CallNotFound:
            log.info("sandbox: call %s is not stored; nothing recorded", call_id)

    # -- what a call does ------------------------------------------------------------------
    def draw_key(self, call: Mapping[str, Any]) -> str:
        """What the draw of `call` is keyed on, the same under the same requests in the same
        order: a batch call's batch (its place among the organization's batches), task (its
        place in the batch) and attempt; any other call's draw, the number of calls of its
        organization this sandbox played before it (recorded on the call when its play
        began, and carried on from the newest calls after a restart). A call that has
        neither (deleted batch, played by an older version) is keyed on its id."""
        metadata = call.get("metadata") or {}
        batch_id = metadata.get("batch_call_id")
        if isinstance(batch_id, str):
            place = self._task_place(call["organization_id"], batch_id, metadata.get("task_id"))
            if place is not None:
                return f"batch:{place[0]}:{place[1]}:{metadata.get('attempt')}"
        draw = recorded_draw(call)
        return f"call:{draw}" if draw is not None else f"id:{call['call_id']}"

    def plan(self, call: Mapping[str, Any], key: str | None = None) -> Plan:
        """How `call` plays out: as its metadata says, else drawn (keyed on `key`, by
        default `draw_key(call)`)."""
        key = key if key is not None else self.draw_key(call)
        metadata = _script(call.get("metadata") or {})
        web = call.get("call_type") == "web_call"
        outcomes, weights = (WEB_OUTCOMES, WEB_WEIGHTS) if web else (OUTCOMES, WEIGHTS)
        rng = random.Random(f"{self.seed}:{key}")
        outcome = rng.choices(outcomes, weights)[0]
        talk, ring = rng.randint(20_000, 180_000), rng.randint(5_000, 25_000)
        scripted = _scripted_outcome(metadata)
        if scripted is not None and scripted in outcomes:
            outcome = scripted
        duration = talk if outcome in ANSWERED else ring  # ringing, not talking
        given = metadata.get("sandbox_duration_ms")
        if isinstance(given, int) and not isinstance(given, bool):
            duration = max(0, given)
        return Plan(outcome, duration, round(duration * self.time_scale), key)

    def ending(self, call: Mapping[str, Any], now: int) -> dict[str, Any]:
        """The update a real dialer would send when `call` ends now (a PUT body)."""
        plan = self.plan(call)
        outcome = plan.outcome
        analysis = {
            "call_successful": outcome == "completed",
            "call_summary": _SUMMARIES[outcome],
            "user_sentiment": "Positive" if outcome == "completed" else "Unknown",
            "in_voicemail": outcome == "voicemail",
        }
        ended = {
            "call_status": "error" if outcome == "failed" else "ended",
            "disconnection_reason": REASONS[outcome],
            "call_analysis": analysis,
        }
        if outcome not in ANSWERED:  # never answered: no start, no duration, nothing said
            return {
                **ended,
                "start_timestamp": None,
                "end_timestamp": now,
                "transcript": None,
                "transcript_object": [],
                "latency": None,
                "recording_url": None,
                "call_cost": {"combined_cost": 0},
            }
        played = plan.played_ms
        # Answered at the dial (a web call: at the join), or later: it lasted `played`.
        end = max(now, (call.get("start_timestamp") or call["created_at"]) + played)
        start = end - played
        lines = SCRIPT if outcome == "completed" else VOICEMAIL
        talk = random.Random(f"{self.seed}:{plan.key}:talk")
        entries, latency = _conversation(lines, played, start, talk)
        return {
            **ended,
            "start_timestamp": start,
            "end_timestamp": end,
            "transcript": "\n".join(f"{role.title()}: {text}" for role, text in lines),
            "transcript_object": entries,
            "latency": latency,
            "recording_url": self._recording_url(call),
            "call_cost": {"combined_cost": round(played / 60_000 * COST_PER_MINUTE, 6)},
        }

    def _recording_url(self, call: Mapping[str, Any]) -> str:
        """Where the call's recording is served: unguessable, by a random token of its own."""
        query = urlencode({"organization_id": call["organization_id"], "token": _token()})
        return f"{self.recordings_url}/{call['call_id']}?{query}"

    def _next_draw(self, organization_id: str) -> int:
        """The draw of the organization's next call (not a batch call) this sandbox plays:
        0, 1, 2... from a fresh store; after a restart, on from the last one recorded."""
        with self._keys:
            if organization_id not in self._draws:
                self._draws[organization_id] = self._resumed(organization_id)
            draw = self._draws[organization_id]
            self._draws[organization_id] = draw + 1
        return draw

    def _resumed(self, organization_id: str) -> int:
        """The draw after the highest recorded on the organization's newest calls (0 if
        none has one): the first page of them holding any, of RESUME_PAGES at most."""
        for page in range(RESUME_PAGES):
            query = CallQuery(page, 100, "created_at", "descending", {})
            found = self.store.list_calls(organization_id, query)[0]
            draws = [d for d in map(recorded_draw, found) if d is not None]
            if draws:
                return max(draws) + 1
            if len(found) < 100:
                break
        return 0

    def _task_place(
        self, organization_id: str, batch_id: str, task_id: Any
    ) -> tuple[int, int] | None:
        """The batch's place among the organization's batches (oldest first) and the task's
        in the batch; None if either is not found."""
        with self._keys:
            known = self._places.get(batch_id)
            if known is None:
                try:
                    ordinal = [
                        b["batch_call_id"] for b in self.store.list_batches(organization_id)
                    ].index(batch_id)
                    tasks = self.store.batch_tasks(organization_id, batch_id)[0]
                except (ApiError, ValueError):
                    return None
                known = ordinal, {t["task_id"]: t["index"] for t in tasks}
                self._places[batch_id] = known
                while len(self._places) > 256:
                    self._places.popitem(last=False)
        index = known[1].get(task_id)
        return None if index is None else (known[0], index)

    # -- the play-out ----------------------------------------------------------------------
    def _after(self, delay_ms: int, step: str, organization_id: str, call_id: str) -> None:
        """Take `step` of the call `delay_ms` from now (already scaled): on the real time,
        or on the organization's frozen test clock (then `run_due` takes it)."""
        with self._wake:
            self._playing.add(call_id)
            if test_clocks.frozen(self.clock, organization_id):
                when = test_clocks.now_of(self.clock, organization_id) + delay_ms
                steps = self._frozen_due.setdefault(organization_id, [])
                heapq.heappush(steps, (when, next(self._tie), step, call_id))
                return
            when_s = time.monotonic() + delay_ms / 1000
            heapq.heappush(self._due, (when_s, next(self._tie), step, organization_id, call_id))
            self._wake.notify()

    # -- on a test clock (services/test_clocks.py) ------------------------------------------
    def next_due(self, organization_id: str) -> int | None:
        """When the next step of the organization's calls falls due on its frozen clock."""
        with self._wake:
            steps = self._frozen_due.get(organization_id)
            return steps[0][0] if steps else None

    def run_due(self, organization_id: str, now: int) -> int:
        """Take the steps of the organization's calls due by `now` on its frozen clock."""
        taken = 0
        while True:
            with self._wake:
                steps = self._frozen_due.get(organization_id)
                if not steps or steps[0][0] > now:
                    return taken
                _, _, step, call_id = heapq.heappop(steps)
                self._playing.discard(call_id)
            with test_clocks.working_for(organization_id):
                self._step(step, organization_id, call_id)
            taken += 1

    def resumed(self, organization_id: str) -> None:
        """The organization is back on the real time: its steps wait as long on it."""
        now = test_clocks.now_of(self.clock, organization_id)
        with self._wake:
            for when, tie, step, call_id in self._frozen_due.pop(organization_id, []):
                when_s = time.monotonic() + max(0, when - now) / 1000
                heapq.heappush(self._due, (when_s, tie, step, organization_id, call_id))
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._stopping:
                if self._due and self._due[0][0] <= time.monotonic():
                    _, tie, step, org, call_id = heapq.heappop(self._due)
                    if test_clocks.frozen(self.clock, org):  # frozen since: now on its clock
                        when = test_clocks.now_of(self.clock, org)
                        heapq.heappush(
                            self._frozen_due.setdefault(org, []), (when, tie, step, call_id)
                        )
                        continue
                    self._playing.discard(call_id)  # a join adds its end again
                    self._wake.release()
                    try:
                        with test_clocks.working_for(org):
                            self._step(step, org, call_id)
                    finally:
                        self._wake.acquire()
                    continue
                wait = self._due[0][0] - time.monotonic() if self._due else 1.0
                self._wake.wait(max(0.001, min(wait, 1.0)))

    def _step(self, step: str, organization_id: str, call_id: str) -> None:
        try:
            if step == "join":  # a web call's participant joined: it is ongoing
                call = self._change(organization_id, call_id, {"call_status": "ongoing"})
                self._after(self.plan(call).played_ms, "end", organization_id, call_id)
                return
            stored = self.store.get_call(organization_id, call_id)
            status, web = stored["call_status"], stored["call_type"] == "web_call"
            if status == "ongoing" or (status == "registered" and web):  # web: never joined
                self._waits.pop(call_id, None)
                self._change(organization_id, call_id, self.ending(stored, self.clock()))
            elif status == "registered" and self._waits.get(call_id, 0) < 100:
                # A phone call ending before its dial is recorded (a very short one): soon.
                self._waits[call_id] = self._waits.get(call_id, 0) + 1
                self._after(10, "end", organization_id, call_id)
            else:
                self._waits.pop(call_id, None)
        except ApiError as e:  # deleted, or moved on by someone else meanwhile
            log.info("sandbox: call %s not played further: %s", call_id, e.error)
        except Exception:
            log.exception("sandbox: playing call %s failed", call_id)

    def _change(self, organization_id: str, call_id: str, changes: dict[str, Any]) -> calls.Call:
        now = self.clock()
        return self.store.change_call(
            organization_id, call_id, lambda call: calls.update(call, changes, now)
        )


def recorded_draw(call: Mapping[str, Any]) -> int | None:
    """The draw the sandbox recorded on `call` when its play began (None: none)."""
    for event in reversed(call.get("events") or []):
        if event["event"] == calls.PLAYED_EVENT:
            draw = event["data"].get("sandbox_draw")
            return draw if isinstance(draw, int) else None
    return None


def _script(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The call's metadata over (a batch call's) its task's `dynamic_variables`: either may
    script the call."""
    variables = metadata.get("dynamic_variables")
    return {**(variables if isinstance(variables, dict) else {}), **metadata}


def _scripted_outcome(script: Mapping[str, Any]) -> str | None:
    """The outcome `sandbox_outcome` scripts. A list (`no_answer,busy,completed`) scripts a
    batch task's attempts in turn (`attempt`), the last one repeating."""
    outcomes = script.get("sandbox_outcome")
    if not isinstance(outcomes, str):
        return None
    steps = [step.strip() for step in outcomes.split(",")]
    attempt = script.get("attempt")
    turn = attempt - 1 if isinstance(attempt, int) and attempt > 0 else 0
    return steps[min(turn, len(steps) - 1)]


_SUMMARIES = {
    "completed": "The customer asked about an order; the agent confirmed it ships tomorrow.",
    "voicemail": "The call reached voicemail; the agent left a message.",
    "no_answer": "Nobody answered.",
    "busy": "The line was busy.",
    "failed": "The call could not be placed.",
}


def _conversation(
    lines: tuple[tuple[str, str], ...], played: int, start: int, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Transcript entries whose words fill the `played` ms of a call that began at `start`
    (Unix ms), and the latency of the assistant's replies.

    Each entry has its `role`, `content`, `timestamp` (Unix ms, when it began) and `words`
    (`start` and `end` in ms from the call's start). A pause of drawn length comes before
    each turn; all of it fits in the call: no word ends after `played`. The latency (`e2e`,
    upstream's shape) is what each reply waited for: from the end of the user's last word
    to the start of the assistant's first (None: no reply to anyone)."""
    spoken = [text.split() for _, text in lines]
    pauses = [rng.uniform(0.6, 2.4) for _ in lines]  # in words' lengths
    unit = played / (sum(map(len, spoken)) + sum(pauses))
    at, entries, waits = 0.0, [], []
    heard: int | None = None  # when the user's last word ended
    for (role, text), words, pause in zip(lines, spoken, pauses, strict=True):
        at += pause * unit
        timed: list[dict[str, Any]] = []
        for word in words:
            begin, finish = min(round(at), played), min(round(at + 0.85 * unit), played)
            timed.append({"word": word, "start": begin, "end": finish})
            at += unit
        if role == "assistant" and heard is not None:
            waits.append(int(timed[0]["start"]) - heard)
            heard = None
        if role == "user":
            heard = int(timed[-1]["end"])
        entry = {"role": role, "content": text, "timestamp": start + timed[0]["start"]}
        entries.append({**entry, "words": timed})
    return entries, _latency(waits)


def _latency(values: list[int]) -> dict[str, Any] | None:
    """Upstream's latency object for `values` (ms): `e2e: {min, max, num, p50, ...}`."""
    if not values:
        return None
    ordered = sorted(values)

    def percentile(p: int) -> int:  # nearest rank
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    e2e = {"min": ordered[0], "max": ordered[-1], "num": len(values)}
    e2e.update({f"p{p}": percentile(p) for p in (50, 90, 95, 99)})
    return {"e2e": {**e2e, "values": list(values)}}


def _token() -> str:
    return secrets.token_urlsafe(24)


def recording_token(recording_url: str | None) -> str | None:
    """The token of a recording URL the sandbox handed out (None: it has none)."""
    tokens = parse_qs(urlsplit(recording_url or "").query).get("token")
    return tokens[0] if tokens else None


# -- phone numbers: the carrier of an import ---------------------------------------------------
def validate_import(phone_number: str) -> str | None:
    """Why the sandbox's carrier refuses to validate `phone_number` for an import (None: it
    validates it, voice and SMS capable)."""
    why = FAILED_VALIDATIONS.get(phone_number)
    return f"Phone number {phone_number} could not be validated: {why}" if why else None


def sip_trunks(organization_id: str, phone_number: str) -> dict[str, str]:
    """The SIP trunks and dispatch rule an import creates upstream, as the sandbox names
    them: the same for the same number of the same organization."""
    digest = hashlib.sha256(f"{organization_id}:{phone_number}".encode()).hexdigest()
    return {
        "inbound_trunk_id": f"trunk_inbound_{digest[:12]}",
        "outbound_trunk_id": f"trunk_outbound_{digest[12:24]}",
        "dispatch_rule_id": f"dispatch_{digest[24:36]}",
    }


# -- recordings ---------------------------------------------------------------------------------
RECORDING_RATE = 8000  # samples a second, 8-bit mono PCM: 8 kB a second of call
RECORDINGS_KEPT_BYTES = 32 * 1024 * 1024  # the recordings kept for the next fetch, at most
_recordings: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_recordings_bytes = 0
_recordings_lock = threading.Lock()


def recording(call_id: str, duration_ms: int) -> bytes:
    """A WAV (8 kHz mono, 8-bit PCM) standing in for the call's recording, as long as the
    call: a short tone each second, its pitch following the call id, silence between.
    Made by repeating one second (milliseconds even for an hour-long call, 28.8 MB), on the
    caller's thread: callers run it off the event loop. The latest are kept, up to
    RECORDINGS_KEPT_BYTES (players fetch a recording again and again, ranges and all)."""
    global _recordings_bytes
    key = (call_id, max(0, duration_ms))
    with _recordings_lock:
        kept = _recordings.get(key)
        if kept is not None:
            _recordings.move_to_end(key)
            return kept
    frames = round(key[1] * RECORDING_RATE / 1000)
    whole, rest = divmod(frames, RECORDING_RATE)
    second = _second(300 + sum(call_id.encode()) % 400)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(RECORDING_RATE)
        wav.writeframes(second * whole + second[:rest])
    made = out.getvalue()
    with _recordings_lock:
        if key not in _recordings:
            _recordings[key] = made
            _recordings_bytes += len(made)
        while _recordings_bytes > RECORDINGS_KEPT_BYTES and len(_recordings) > 1:
            _recordings_bytes -= len(_recordings.popitem(last=False)[1])
        return _recordings.get(key, made)


@functools.lru_cache(maxsize=64)
def _second(pitch: int) -> bytes:
    """One second of recording: a quarter second of a `pitch` Hz tone, then silence."""
    tone = RECORDING_RATE // 4
    beep = bytes(
        128 + round(90 * math.sin(2 * math.pi * pitch * n / RECORDING_RATE)) for n in range(tone)
    )
    return beep + bytes([128]) * (RECORDING_RATE - tone)
