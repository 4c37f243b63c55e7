"""The sandbox dialer: calls that play out without a telephone network (CALLS_SANDBOX).

It accepts every phone call it is handed, as a real dialer would (the call goes
`ongoing`), and plays web calls too (a participant joins after a second). After the call's
duration it ends the call through the normal update path (`domain.calls.update`), so the
events, webhooks and lifecycle are exactly those a real dialer's updates produce. The end
carries what a real call leaves behind: timestamps and duration, a transcript with word
timings, an analysis, a cost, a `recording_url` this server serves (a generated tone) and
a disconnection reason.

What happens is scripted per call through its metadata, or drawn from a seeded random
generator keyed by the call id (so the same seed gives the same calls the same outcomes):

- `sandbox_outcome`: `completed` (ended, `user_hangup`), `voicemail` (ended,
  `voicemail_reached`), `no_answer` (ended, `dial_no_answer`, nothing said), `busy`
  (ended, `dial_busy`), `failed` (error, `dial_failed`); a comma-separated list scripts a
  batch task's attempts in turn;
- `sandbox_duration_ms`: how long the call lasts once answered (or rings, unanswered).

A batch call (domain/batches.py) takes both from its task's `dynamic_variables` too.

`time_scale` shortens every wait (0.001: a two-minute call ends after 0.12 s), for tests.

The play-out lives in the memory of the process: a call under way when its process stops
(a `kill -9`, a restart) is played no further. Whoever follows it ends it (`cut_off`, in
`error` with `error_unknown`, the event saying why): the batch dispatcher does so for the
batch calls whose dialing process no longer serves the store; the scheduler for the
others. So that it can tell, the sandbox records on every other call, durably and before
playing it, that its process plays it (`calls.played_by`; `Store.abandoned_sandbox_calls`
finds those whose process stopped). A batch call is followed by its task, which records
the process that dialed it: it is not recorded again on the call.

A second dial of a call the sandbox is playing plays nothing more (its call id is the
Idempotency-Key a real dialer would honour), so a dial whose outcome a restart lost may be
made again.

An answered call's `recording_url` carries its organization and a random token of its
own (`?organization_id=...&token=...`): the recording is served only for a call that
exists and holds that URL.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import logging
import math
import random
import secrets
import struct
import threading
import time
import wave
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from calls_server.domain import calls
from calls_server.domain.errors import ApiError, CallNotFound, Conflict
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.dialer import DialOutcome
from calls_server.storage import Store

log = logging.getLogger("calls_server.sandbox")

OUTCOMES = ("completed", "voicemail", "no_answer", "busy", "failed")
# How often each outcome is drawn when the call's metadata names none.
WEIGHTS = (70, 10, 10, 5, 5)
REASONS = {
    "completed": "user_hangup",
    "voicemail": "voicemail_reached",
    "no_answer": "dial_no_answer",
    "busy": "dial_busy",
    "failed": "dial_failed",
}
JOIN_DELAY_MS = 1000  # a web call's participant joins after this long
SCRIPT = (
    ("agent", "Hello, this is your assistant calling. How can I help you today?"),
    ("user", "Hi, I would like to check on my order please."),
    ("agent", "Of course. I can see it shipped this morning and arrives tomorrow."),
    ("user", "Great, thank you so much."),
    ("agent", "You are welcome. Have a good day!"),
)
VOICEMAIL = (("agent", "Hello, this is your assistant. Please call us back at your convenience."),)
# How a call the sandbox of a stopped process was playing ends: upstream's reason for an
# error it does not name, the event saying what happened.
CUT_OFF_REASON = "error_unknown"
CUT_OFF_WHY = "the sandbox dialer playing the call stopped with its process (restart or kill)"


class SandboxDialer:
    """A `Dialer` that plays every call out by itself, on one thread of its own."""

    idempotent = True  # a call it is playing is not played twice

    def __init__(
        self,
        store: Store,
        recordings_url: str,
        seed: int = 0,
        time_scale: float = 1.0,
        clock: Clock = wall_clock,
    ) -> None:
        self.store = store
        self.recordings_url = recordings_url.rstrip("/")
        self.seed = seed
        self.time_scale = time_scale
        self.clock = clock
        self._due: list[tuple[float, int, str, str, str]] = []  # (when, tie, step, org, call)
        self._playing: set[str] = set()  # the call ids it has steps of
        self._tie = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sandbox-dialer", daemon=True)

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
        if not again:
            if "batch_call_id" not in job["metadata"]:  # a batch call's task records it
                self._mark(job["organization_id"], job["call_id"])
            self._after(self.plan(job)[1], "end", job["organization_id"], job["call_id"])
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
        for organization_id, call_id, process in self.store.abandoned_sandbox_calls():
            try:
                self.cut_off(organization_id, call_id, played_by=process)
                ended += 1
            except ApiError as e:  # ended meanwhile (a PUT, or another process's cut)
                log.debug("sandbox: not cutting off %s: %s", call_id, e.error)
        if ended:
            log.warning("sandbox: ended %d calls left under way by a stopped process", ended)
        return ended

    def play_web_call(self, call: Mapping[str, Any]) -> None:
        """Play out a new web call: its participant joins, then it ends."""
        self._mark(call["organization_id"], call["call_id"])
        self._after(JOIN_DELAY_MS, "join", call["organization_id"], call["call_id"])

    def _mark(self, organization_id: str, call_id: str) -> None:
        """Record on the call, before playing it, that this process's sandbox plays it (a
        call not stored, deleted meanwhile, has nothing to record: its play-out finds
        nothing either)."""
        me, now = self.store.process_id, self.clock()
        try:
            self.store.change_call(
                organization_id, call_id, lambda call: calls.played_by(call, me, now)
            )
        except CallNotFound:
            log.info("sandbox: call %s is not stored; nothing recorded", call_id)

    def plan(self, call: Mapping[str, Any]) -> tuple[str, int]:
        """The outcome and duration (ms) of `call`: as its metadata says, else drawn."""
        metadata = _script(call.get("metadata") or {})
        rng = random.Random(f"{self.seed}:{call['call_id']}")
        outcome = rng.choices(OUTCOMES, WEIGHTS)[0]
        duration = rng.randint(20_000, 180_000)
        scripted = _scripted_outcome(metadata)
        if scripted in OUTCOMES:
            outcome = scripted
        if isinstance(metadata.get("sandbox_duration_ms"), int):
            duration = max(0, metadata["sandbox_duration_ms"])
        if outcome in ("no_answer", "busy", "failed") and "sandbox_duration_ms" not in metadata:
            duration = rng.randint(5_000, 25_000)  # ringing, not talking
        return outcome, duration

    def ending(self, call: Mapping[str, Any], now: int) -> dict[str, Any]:
        """The update a real dialer would send when `call` ends now (a PUT body)."""
        outcome, duration = self.plan(call)
        start = call.get("start_timestamp") or now - duration
        lines = SCRIPT if outcome == "completed" else VOICEMAIL if outcome == "voicemail" else ()
        transcript_object = _transcript(lines, duration)
        answered = outcome in ("completed", "voicemail")
        return {
            "call_status": "error" if outcome == "failed" else "ended",
            "start_timestamp": start,
            "end_timestamp": max(start, now),
            "disconnection_reason": REASONS[outcome],
            "transcript": "\n".join(f"{role.title()}: {text}" for role, text in lines) or None,
            "transcript_object": transcript_object,
            "recording_url": self._recording_url(call) if answered else None,
            "call_analysis": {
                "call_successful": outcome == "completed",
                "call_summary": _SUMMARIES[outcome],
                "user_sentiment": "Positive" if outcome == "completed" else "Unknown",
                "in_voicemail": outcome == "voicemail",
            },
            "call_cost": {"combined_cost": round(duration / 60_000 * 0.07, 4) if answered else 0},
        }

    def _recording_url(self, call: Mapping[str, Any]) -> str:
        """Where the call's recording is served: unguessable, by a random token of its own."""
        query = urlencode({"organization_id": call["organization_id"], "token": _token()})
        return f"{self.recordings_url}/{call['call_id']}?{query}"

    # -- the play-out ----------------------------------------------------------------------
    def _after(self, delay_ms: int, step: str, organization_id: str, call_id: str) -> None:
        when = time.monotonic() + delay_ms / 1000 * self.time_scale
        with self._wake:
            heapq.heappush(self._due, (when, next(self._tie), step, organization_id, call_id))
            self._playing.add(call_id)
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while not self._stopping:
                if self._due and self._due[0][0] <= time.monotonic():
                    _, _, step, org, call_id = heapq.heappop(self._due)
                    self._playing.discard(call_id)  # a join adds its end again
                    self._wake.release()
                    try:
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
                self._after(self.plan(call)[1], "end", organization_id, call_id)
            else:
                stored = self.store.get_call(organization_id, call_id)
                if stored["call_status"] == "ongoing":
                    self._change(organization_id, call_id, self.ending(stored, self.clock()))
        except ApiError as e:  # deleted, or moved on by someone else meanwhile
            log.info("sandbox: call %s not played further: %s", call_id, e.error)
        except Exception:
            log.exception("sandbox: playing call %s failed", call_id)

    def _change(self, organization_id: str, call_id: str, changes: dict[str, Any]) -> calls.Call:
        now = self.clock()
        return self.store.change_call(
            organization_id, call_id, lambda call: calls.update(call, changes, now)
        )


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


def _transcript(lines: tuple[tuple[str, str], ...], duration: int) -> list[dict[str, Any]]:
    """Transcript entries whose words are spread evenly over the call (seconds)."""
    words = sum(len(text.split()) for _, text in lines) or 1
    step = duration / 1000 / (words + len(lines))
    at, entries = 0.0, []
    for role, text in lines:
        timed = []
        for word in text.split():
            timed.append({"word": word, "start": round(at, 3), "end": round(at + step * 0.8, 3)})
            at += step
        at += step  # a pause between turns
        entries.append({"role": role, "content": text, "words": timed})
    return entries


def _token() -> str:
    return secrets.token_urlsafe(24)


def recording_token(recording_url: str | None) -> str | None:
    """The token of a recording URL the sandbox handed out (None: it has none)."""
    tokens = parse_qs(urlsplit(recording_url or "").query).get("token")
    return tokens[0] if tokens else None


@functools.lru_cache(maxsize=32)  # players fetch a recording again and again, ranges and all
def recording(call_id: str, seconds: float = 2.0, rate: int = 8000) -> bytes:
    """A short WAV (8 kHz mono PCM) standing in for the call's recording: a tone whose pitch
    follows the call id. Takes milliseconds of pure Python: callers run it off the event
    loop."""
    pitch = 300 + sum(call_id.encode()) % 400
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * pitch * n / rate)))
        for n in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return out.getvalue()
