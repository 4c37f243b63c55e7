"""The one interface every storage backend implements, and the only one handlers use:
`Store`, the union of roles (calls, accounts, agents, ..., durability), each a protocol of
its own, so that a consumer names the roles it uses (the scheduler: calls, scheduled
calls, processes) and a reader finds any method's role and its one specification here.

Every method is atomic and safe to call from many threads at once. Records go in and come
out as plain dicts that the caller owns (a backend never hands out its own copy). Changes
are expressed as pure functions of the stored record (see `domain.calls`), which the
backend applies under its own lock or transaction: if the function raises, nothing is
written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Protocol

from calls_server.domain.agents import Agent
from calls_server.domain.batches import Batch, Task
from calls_server.domain.calls import Call
from calls_server.domain.fixtures import Counts, Fixture
from calls_server.domain.idempotency import IdempotentAnswer
from calls_server.domain.keys import ApiKey, Organization
from calls_server.domain.listing import CallPage, CallQuery
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.domain.webhooks import Webhook, WebhookEvent

# Called with (before, after, the organization's webhooks, the ids of those assigned to the
# call's agent) for every change of a call (None: absent), inside its write: the webhook
# events that change owes, to be recorded in the same atomic write. Must be quick and pure.
EventSource = Callable[[Call | None, Call | None, list[Webhook], list[str]], list[WebhookEvent]]
# Changes a task and its batch together, given the number of the organization's batch calls
# under way (across its batches, read under the same lock).
TaskChange = Callable[[Batch, Task, int], tuple[Batch, Task]]
# Called with webhook events that are pending (recorded, queued again, or due sooner; each
# summed up: its ids, status and next attempt, not its payload), in commit order, possibly
# under the store's lock: it must only take note, never block. Told twice of an event, it
# looks at it again.
EventListener = Callable[[list[WebhookEvent]], None]
# One change of a webhook event, as `Outbox.change_webhook_events` applies it: (organization
# id, webhook id, event id, the change: a pure function of the stored event).
EventChange = tuple[str, str, str, Callable[[WebhookEvent], WebhookEvent]]
# Called when this process is no longer to deliver the events of some partitions (None: of
# every one, its connection to the database lost): the deliverer drops the events it was
# told of in them, and returns once the attempts it has under way on them are recorded, so
# that the next process to deliver them does not attempt them at the same time. An event's
# partition is its `partition` as told (none on a store of one process).
EventForget = Callable[[frozenset[int] | None], None]
# The Idempotency-Key claim the current request runs under, and until when (Unix ms) its
# answer would be kept. Every store marks that claim, in the transaction (or journal
# record) of each record it adds, with the record's kind and id (`written`), and keeps the
# mark that long: a retry after an unknown outcome (PostgreSQL: the connection dropped after
# COMMIT was sent), or after the process stopped before keeping the answer, then finds
# what was stored instead of adding it again.
UNDER_CLAIM: ContextVar[tuple[IdempotentAnswer, int] | None] = ContextVar(
    "UNDER_CLAIM", default=None
)


class CallRecords(Protocol):
    """Calls, each scoped to its organization."""

    def add_call(self, call: Call) -> None:
        """Store a new call. Raises DuplicateId if its call_id exists in its organization."""

    def get_call(self, organization_id: str, call_id: str) -> Call:
        """The call. Raises CallNotFound, also when it belongs to another organization."""

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        """Replace the call by `change(call)` atomically and return the new record."""

    def delete_call(
        self, organization_id: str, call_id: str, check: Callable[[Call], None] | None = None
    ) -> Call:
        """Remove the call for good and return it. Raises CallNotFound. `check`, if given, is
        called with the stored call first, atomically with the removal: if it raises,
        nothing is removed."""

    def list_calls(self, organization_id: str, query: CallQuery) -> CallPage:
        """One page of the organization's calls that match `query` (by number, or after its
        cursor's position), how many match, and the last one's position if more follow."""

    def call_statuses(self, organization_id: str, call_ids: list[str]) -> dict[str, str]:
        """The `call_status` of each of the calls that exist (the others left out): what
        the batch dispatcher asks of the calls under way, without reading them whole."""


class ScheduledCalls(Protocol):
    """The calls that fall due: what the scheduler looks for."""

    def scheduled_calls(self, due_by: int) -> list[Call]:
        """Every organization's `scheduled` calls due at or before `due_by` (Unix seconds)."""


class SandboxPlayers(Protocol):
    """Sandbox calls whose player stopped: what a starting sandbox settles."""

    def abandoned_sandbox_calls(self) -> list[tuple[str, str, str]]:
        """(organization, call id, process) of every organization's call under way whose
        sandbox player (`calls.player`) is a process that no longer serves the store (not in
        `live_processes`, read together with the calls: a process that starts meanwhile
        counts as live), by organization, then call id. Reads only such calls, not every
        call under way."""


class Accounts(Protocol):
    """Organizations and their API keys."""

    def add_organization(self, organization: Organization) -> None:
        """Store a new organization. Raises DuplicateId if its id exists."""

    def get_organization(self, organization_id: str) -> Organization:
        """The organization. Raises OrganizationNotFound."""

    def add_api_key(self, key: ApiKey) -> None:
        """Store a new key of an existing organization. Raises OrganizationNotFound;
        DuplicateId if its `api_key` or `api_key_id` is taken (nothing stored)."""

    def find_api_key(self, api_key: str) -> ApiKey | None:
        """The key record whose public part is `api_key`, active or not, if any."""

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        """The organization's keys, oldest first. Raises OrganizationNotFound."""

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        """Replace the key by `change(key)` atomically. Raises ApiKeyNotFound."""


class AgentRecords(Protocol):
    """An organization's agents."""

    def add_agent(self, agent: Agent) -> None:
        """Store a new agent of an existing organization. Raises OrganizationNotFound;
        DuplicateId if the organization has an agent with its id (nothing stored)."""

    def list_agents(self, organization_id: str) -> list[Agent]:
        """The organization's agents, oldest first."""

    def get_agent(self, organization_id: str, agent_id: str) -> Agent:
        """The agent. Raises AgentNotFound, also for another organization's."""

    def change_agent(
        self, organization_id: str, agent_id: str, change: Callable[[Agent], Agent]
    ) -> Agent:
        """Replace the agent by `change(agent)` atomically. Raises AgentNotFound."""

    def delete_agent(self, organization_id: str, agent_id: str) -> Agent:
        """Remove the agent and return it. Raises AgentNotFound."""


class PhoneNumberRecords(Protocol):
    """An organization's phone numbers."""

    def add_phone_number(self, number: PhoneNumber) -> None:
        """Store a new number of an existing organization. Raises DuplicateId if the
        organization has it already."""

    def list_phone_numbers(self, organization_id: str) -> list[PhoneNumber]:
        """The organization's numbers, oldest first."""

    def get_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        """The number. Raises PhoneNumberNotFound, also for another organization's."""

    def change_phone_number(
        self,
        organization_id: str,
        phone_number: str,
        change: Callable[[PhoneNumber], PhoneNumber],
    ) -> PhoneNumber:
        """Replace the number by `change(number)` atomically. Raises PhoneNumberNotFound."""

    def delete_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        """Remove the number and return it. Raises PhoneNumberNotFound."""


class WebhookRecords(Protocol):
    """An organization's post-call webhooks."""

    def add_webhook(self, webhook: Webhook, check: Callable[[int], None] | None = None) -> None:
        """Store a new webhook of an existing organization. Raises OrganizationNotFound;
        DuplicateId if the organization has a webhook with its id (nothing stored).
        `check`, if given, is called with how many webhooks the organization has,
        atomically with the insert (no other webhook of the organization is added in
        between): if it raises, nothing is stored."""

    def list_webhooks(self, organization_id: str) -> list[Webhook]:
        """The organization's webhooks, oldest first."""

    def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        """The webhook. Raises WebhookNotFound, also for another organization's."""

    def change_webhook(
        self, organization_id: str, webhook_id: str, change: Callable[[Webhook], Webhook]
    ) -> Webhook:
        """Replace the webhook by `change(webhook)` atomically. Raises WebhookNotFound."""

    def delete_webhook(
        self,
        organization_id: str,
        webhook_id: str,
        check: Callable[[Webhook], None] | None = None,
    ) -> Webhook:
        """Remove the webhook, its events and its assignments to agents, and return it.
        Raises WebhookNotFound. `check`, if given, is called with the stored webhook first,
        atomically with the removal: if it raises, nothing is removed."""


class BatchRecords(Protocol):
    """Batch calls (campaigns) and their tasks."""

    def add_batch(self, batch: Batch, tasks: list[Task]) -> None:
        """Store a new batch and its tasks, together. Raises OrganizationNotFound;
        DuplicateId if the organization has a batch with its id (nothing stored)."""

    def get_batch(self, organization_id: str, batch_id: str) -> Batch:
        """The batch. Raises BatchNotFound, also for another organization's."""

    def list_batches(self, organization_id: str) -> list[Batch]:
        """The organization's batches, oldest first."""

    def change_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], Batch],
        each_task: Callable[[Batch, Task], tuple[Batch, Task]] | None = None,
    ) -> Batch:
        """Replace the batch by `change(batch)`, then, if given, each of its tasks (in
        order) by `each_task(batch, task)`, the batch following; all atomically."""

    def replace_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], tuple[Batch, list[Task]]],
    ) -> Batch:
        """Replace the batch and all its tasks by `change(batch)`, atomically."""

    def delete_batch(
        self, organization_id: str, batch_id: str, check: Callable[[Batch], None] | None = None
    ) -> Batch:
        """Remove the batch and its tasks for good (its calls stay) and return it. Raises
        BatchNotFound. `check`, if given, is called with the stored batch first, atomically
        with the removal: if it raises, nothing is removed (as for every delete)."""

    def batch_tasks(
        self,
        organization_id: str,
        batch_id: str,
        status: str | None = None,
        due_by: int | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Task], int]:
        """`limit` (None: all) of the batch's tasks from `offset`, in the batch's order,
        only those in `status`; or only the pending ones due by `due_by` (Unix ms), the
        earliest due first (then in the batch's order); and how many match. Raises
        BatchNotFound."""

    def change_batch_task(
        self, organization_id: str, batch_id: str, task_id: str, change: TaskChange
    ) -> tuple[Batch, Task]:
        """Replace the task and its batch by `change(batch, task, calling)` atomically,
        `calling` being how many of the organization's batch calls are under way (what
        `batches.active` batches count in `in_progress`), read under the same lock: no two
        changes of one organization's tasks run at once. Raises BatchNotFound or
        TaskNotFound."""

    def active_batches(self) -> list[Batch]:
        """Every organization's batches the dispatcher has work in (`batches.active`),
        oldest first (the dispatcher fills the caps in that order)."""


class Outbox(Protocol):
    """Webhook events: recorded with the changes that owe them, delivered, pruned."""

    def record_webhook_events(
        self, source: EventSource, listener: EventListener, forget: EventForget
    ) -> None:
        """From now on, record with every change of a call, atomically, the events `source`
        says it owes; tell `listener` of the pending events this process is to deliver:
        every one pending now, then each that becomes pending, in commit order. The
        processes sharing a store share the delivery by partitions of the calls (each
        call's events in one partition, each partition delivered by one process at a time):
        a process is told of the events of the partitions it takes, and when it gives some
        up or loses them (its connection to the database lost), `forget` is called, and it
        must drop what it was told of them and not deliver it (the events stay pending for
        the next one)."""

    def pending_webhook_events(self) -> list[WebhookEvent]:
        """Every organization's pending events, in the order they were recorded."""

    def list_webhook_events(
        self,
        organization_id: str,
        webhook_id: str,
        status: str | None = None,
        since: int | None = None,
        offset: int = 0,
        limit: int | None = None,
        call_id: str | None = None,
    ) -> tuple[list[WebhookEvent], int]:
        """`limit` (None: all) of the webhook's events from `offset`, newest first, only those
        in `status`, recorded at or after `since` (Unix ms) and of the call `call_id` if
        given, and how many match. Raises WebhookNotFound."""

    def get_webhook_event(
        self, organization_id: str, webhook_id: str, event_id: str
    ) -> WebhookEvent:
        """The event. Raises WebhookNotFound or WebhookEventNotFound."""

    def get_webhooks_with_events(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> list[tuple[Webhook | None, WebhookEvent | None]]:
        """For each (organization id, webhook id, event id) of `keys`, in their order, the
        webhook and its event (as `get_webhook` and `get_webhook_event` read them), all in
        one read: the webhook None if it does not exist (nor, then, its event), the event
        None if it does not. A webhook read for several events is one copy, shared by them. What the
        deliverer reads for every attempt it starts at once (one lock, or one round trip,
        instead of one each)."""

    def change_webhook_event(
        self,
        organization_id: str,
        webhook_id: str,
        event_id: str,
        change: Callable[[WebhookEvent], WebhookEvent],
    ) -> WebhookEvent:
        """Replace the event by `change(event)` atomically and return the new record."""

    def change_webhook_events(self, changes: Sequence[EventChange]) -> list[WebhookEvent | None]:
        """Apply each change as `change_webhook_event` does, in one write: the new records in
        the order of `changes`, None for an event that no longer exists (nor its webhook),
        which is left alone. Atomic for each organization's changes at least (the embedded
        store writes them all in one journal record; PostgreSQL each organization's in one
        transaction, as a distributed database routes a transaction to one organization's
        shard): if a change raises, it is raised, and none of its organization's changes is
        written (those of others may be). Much cheaper per event than a write each: the
        deliverer records the attempts of many deliveries so."""

    def prune_webhook_events(self, settled_before: int, organization_id: str | None = None) -> int:
        """Remove events delivered or given up before then (Unix ms), of every organization
        or of `organization_id` only (one on a test clock); how many were removed."""


class IdempotencyRecords(Protocol):
    """Idempotency-Key answers and the claims of requests running with a key."""

    def find_idempotent(self, scope: str, key: str) -> IdempotentAnswer | None:
        """The answer kept for `key` in `scope` (an organization, or the admin API), if any
        (it may have expired: callers compare `expires_at`)."""

    def keep_idempotent(self, answer: IdempotentAnswer) -> None:
        """Keep `answer` (replacing one of the same scope and key); answers expired by its
        `created_at` are dropped on the way. Quick enough for the event loop: it may return
        before the answer is on disk, if a crash of the process cannot lose it then (the
        machine's may, until the next durable write)."""

    def claim_idempotent(self, claim: IdempotentAnswer, now: int) -> IdempotentAnswer | None:
        """Record `claim` (a request with its key about to run, `idempotency.claim`) unless
        a record of its scope and key that has not expired by `now` exists: then answer that
        record (another process's claim, or an answer kept). None: claimed. A claim marked
        `written` (see `UNDER_CLAIM`) expires with the answer it stands for, not with its
        lease: it is never taken over before. A store that one process serves at a time
        needs no claims (the process knows what it runs) and may answer None without
        writing."""

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Remove `claim` if it is still the record of its key (its request's answer is not
        one to keep: the next retry runs it again), unless a record was added under it
        (`UNDER_CLAIM`): then mark it `ended`, so that a retry answers what was added."""


class Processes(Protocol):
    """The processes that serve the store (one, or many on one database)."""

    @property
    def process_id(self) -> str:
        """This process's id among those serving the store, never given to another process
        while this one serves it (scheduler claims are recorded under it)."""

    def live_processes(self) -> set[str]:
        """The ids of the processes serving the store now, this one's included: a claim by
        any other process was left behind by one that stopped."""


class Durability(Protocol):
    """Readiness, durability and release of the store as a whole."""

    # Whether reads wait for I/O (a database over the network): code on the event loop
    # then reads on a worker thread. False: reads are answered from memory in microseconds.
    reads_wait: bool

    def check_ready(self) -> None:
        """Return when the store can serve requests; raise StoreUnavailable, naming the
        cause, when it cannot (quickly: readiness probes call it)."""

    def wait_durable(self) -> None:
        """Return once every change made so far is on disk."""

    def close(self) -> None:
        """Flush what needs flushing and release the data (the lock, connections)."""


class SandboxState(Protocol):
    """An organization's records as a whole: exported, loaded, emptied (the sandbox's
    `sandbox_state` operations). Each atomic: all of it, or nothing."""

    def export_organization(self, organization_id: str) -> Fixture:
        """Every record of the organization as stored (`fixtures.exported`): agents, phone
        numbers, webhooks, calls (with their event timelines), batch calls each with its
        tasks; each kind oldest first. Webhook events, kept Idempotency-Key answers and API
        keys are not part of it. Read at one instant. Raises OrganizationNotFound."""

    def load_organization(
        self,
        organization_id: str,
        fixture: Fixture,
        check: Callable[[Counts], None] | None = None,
    ) -> Counts:
        """Add the records of `fixture` (as `export_organization` answers them, from this or
        another organization) to the organization, ids kept, each made the organization's,
        and answer how many of each kind. Checked first by `fixtures.loadable` against the
        ids the organization holds (BadRequest naming each record that cannot be loaded),
        then by the quota, then by `check`, if given, with how many records of each kind the
        organization would hold: if anything raises, nothing is loaded. Indexed as the
        records' own adds index them; no webhook events are recorded for them (nothing
        happened to the calls), and the load dials and plays nothing (a scheduled call falls
        due as any other). Raises OrganizationNotFound."""

    def reset_organization(self, organization_id: str) -> Counts:
        """Remove every record of the organization (agents, phone numbers, webhooks and
        their events, calls, batch calls and their tasks, its kept Idempotency-Key answers
        and claims) at once, recording no webhook event, and answer how many of each kind
        (`fixtures.KINDS`) were removed. The organization and its API keys stay. Raises
        OrganizationNotFound."""


class Store(
    CallRecords,
    ScheduledCalls,
    SandboxPlayers,
    Accounts,
    AgentRecords,
    PhoneNumberRecords,
    WebhookRecords,
    BatchRecords,
    Outbox,
    IdempotencyRecords,
    Processes,
    Durability,
    SandboxState,
    Protocol,
):
    """Everything the server stores: the union of the roles above, which every backend
    implements. A consumer that needs only some of them names those (its own union of
    roles), so what it may touch is read off its signature."""


class DatabaseNotEmpty(Exception):
    """A copy into a database that holds records already."""
