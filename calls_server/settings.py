"""The server's settings: read once from the environment (flags override), typed, checked."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from calls_server.domain.casing import MODES
from calls_server.domain.quotas import Quota
from calls_server.domain.webhooks import RetryPolicy
from calls_server.integrations.egress import EgressPolicy

if typing.TYPE_CHECKING:  # imported where they are built: every command reads settings
    from calls_server.integrations.dialer import HttpDialer
    from calls_server.integrations.livekit import LiveKitRooms
    from calls_server.storage import Store

PREFIX = "CALLS_"
T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def setting(default: T, doc: str, *, section: str | None = None) -> T:
    """A `Settings` field: its default, and what it means (Markdown: a row of
    docs/configuration.md, which `calls-server settings --markdown` writes). The first field
    of a group names the group's `section`, the page's heading above it."""
    metadata = {"doc": doc} if section is None else {"doc": doc, "section": section}
    field: T = dataclasses.field(default=default, metadata=metadata)
    return field


@dataclass(frozen=True)
class Settings:
    """Everything that can be configured. Each field is also `CALLS_<FIELD>` in the environment;
    its description is `Settings.describe(name)`."""

    # `setting` is dataclasses.field (ruff knows only the latter), and a Path is immutable.
    data_dir: Path = setting(  # noqa: RUF009
        Path("calls-data"),
        "where the embedded store keeps its files, a relative path from the working directory "
        "(`--data-dir`)",
        section="Storage",
    )
    compact_every: int = setting(
        10_000,
        "journal records between two snapshots of the embedded store, at least (a larger store "
        "waits for as many records as it has documents)",
    )
    database_url: str | None = setting(
        None,
        "a PostgreSQL database instead of the data directory (`postgresql://user:password@host"
        ":5432/database`, or a libpq `key=value` string): for more than one server process or "
        "machine (see [PostgreSQL](postgresql.md)); unset: the embedded store",
    )
    database_pool_size: int = setting(
        10, "connections to that database, at most, per server process"
    )
    database_statement_timeout: float = setting(
        30.0,
        "seconds a statement may run on that database (its `statement_timeout`); a call to it "
        "that gets no answer (a stopped or hung server) is cut 5 s later (see "
        "[Faults](postgresql.md#faults))",
    )
    workers: int = setting(
        1,
        "server processes sharing the port (`serve --workers`); above 1 only with "
        "`CALLS_DATABASE_URL`",
        section="Server",
    )
    host: str = setting(
        "127.0.0.1", "address to listen on (`0.0.0.0` to expose it; `serve --host`)"
    )
    port: int = setting(8080, "port to listen on (`serve --port`)")
    admin_token: str | None = setting(
        None,
        "bearer token of the admin API (`/api/organizations`...), 16+ characters; unset: the "
        "admin API is off",
    )
    max_body_bytes: int = setting(1_048_576, "larger request bodies are answered 413")
    validate_responses: bool = setting(
        False,
        "check every response against the spec, `openapi.yaml` (on in the tests; it costs time "
        "per request)",
    )
    cors_origins: str = setting(
        "",
        "browser origins allowed to call the API, comma-separated (`https://app.example.com`); "
        "preflights are answered; the headers the API's features use may be sent and read; "
        "unset: CORS off",
    )
    enum_case: str = setting(
        "upstream",
        "how responses case `call_status`, `call_type`, `direction`, `disconnection_reason` and "
        "batch `status`: `upstream` (per endpoint, as upstream), `lower` or `upper` throughout",
    )
    log_level: str = setting(
        "info",
        "`critical`, `error`, `warning`, `info` or `debug` (`serve --log-level`)",
        section="Logging",
    )
    log_json: bool = setting(
        False,
        "log lines as JSON objects, one per line (`time`, `level`, `logger`, `message`, "
        "`request_id`; access lines also `method`, `path`, `status`, `duration_ms`, "
        "`organization_id`, `client`) instead of text",
    )
    log_access: bool = setting(
        True,
        "the access log: one INFO line per request with its method, path, status, duration "
        "(ms), request id, the organization that authenticated, and the client's address "
        "(`false`: none)",
    )
    livekit_url: str | None = setting(
        None,
        "LiveKit server for web calls (`wss://…`); with the API key and secret (all three, or "
        "none), `create-web-call` issues tokens",
        section="LiveKit (web calls)",
    )
    livekit_api_key: str | None = setting(None, "LiveKit API key (the token's issuer)")
    livekit_api_secret: str | None = setting(None, "LiveKit API secret (signs the tokens)")
    livekit_token_ttl: int = setting(3600, "token lifetime in seconds, 60 at least")
    livekit_identity: str = setting(
        "web-user-{call_id}", "the browser participant's identity; it contains `{call_id}`"
    )
    dialer_url: str | None = setting(
        None,
        "the operator's outbound dialer; with the secret (both, or neither), "
        "`create-phone-call` POSTs the job there",
        section="Dialer (phone calls)",
    )
    dialer_secret: str | None = setting(
        None,
        "HMAC-SHA256 key of the `Calls-Signature` (and deprecated `X-Calls-Signature`) header",
    )
    dialer_timeout: float = setting(5.0, "seconds per attempt")
    dialer_attempts: int = setting(
        3,
        "attempts on a 5xx, 408, 429, timeout or connection error (backoff 0.5 s, doubling)",
    )
    dialer_deadline: float = setting(
        10.0,
        "seconds one dial may take, every attempt and back-off included (each attempt's "
        "timeouts are cut to what is left); `create-phone-call`'s wait for a dialing thread "
        "counts against it too, so it answers within it (plus the call's writes; past it: "
        "`call_failed`)",
    )
    dialer_idempotent: bool = setting(
        False,
        "the dialer places one call per `Idempotency-Key` (keeping the keys it has seen for a "
        "day at least): a batch attempt whose dial a restart interrupted is dialed again under "
        "its key instead of failing",
    )
    dialer_concurrency: int = setting(
        8,
        "phone calls handed to the dialer at once; each waits on a worker thread of this pool "
        "of its own, so a hanging dialer never holds the threads of other requests",
    )
    sandbox: bool = setting(
        False,
        "the sandbox dialer instead of a real one (not with `CALLS_DIALER_URL`): calls play out "
        "by themselves, with outcomes scripted per call in metadata or drawn under the seed "
        "(see [Offline integration testing](sandbox.md))",
        section="Sandbox",
    )
    sandbox_seed: int = setting(0, "the seed sandbox outcomes and durations are drawn from")
    sandbox_time_scale: float = setting(
        1.0, "multiplies every sandbox wait (`0.001` for test suites)"
    )
    webhook_delivery: bool = setting(
        True,
        "send status events to the registered webhooks (`false` for sandboxes whose webhooks "
        "must stay quiet)",
        section="Webhooks",
    )
    webhook_allow_http: bool = setting(
        False, "accept `http://` webhook URLs (loopback, testing); `https://` only otherwise"
    )
    webhook_allow_networks: str = setting(
        "",
        "private networks webhooks may go to, CIDRs comma-separated (`10.1.0.0/16` for "
        "on-premises receivers, or `127.0.0.0/8` for tests); public addresses are always "
        "allowed",
    )
    webhooks_per_organization: int = setting(16, "how many webhooks one organization may have")
    webhook_concurrency: int = setting(16, "deliveries under way at once, all webhooks together")
    webhook_connections_per_endpoint: int = setting(
        8,
        "deliveries under way at once to one webhook (each call's events still go one at a "
        "time, in order)",
    )
    webhook_timeout: float = setting(5.0, "seconds a receiver has to answer one delivery")
    webhook_retry_first_delay: float = setting(
        30.0, "seconds before the first retry; each later wait doubles"
    )
    webhook_retry_max_delay: float = setting(
        3600.0, "the longest wait between two retries (seconds)"
    )
    webhook_retry_for: float = setting(
        3 * 86400.0,
        "seconds an event is retried, counted from when it was queued, before it is given up: "
        "marked failed (and kept)",
    )
    webhook_disable_after: float = setting(
        3 * 86400.0, "a webhook failing every delivery this long (seconds) is switched off"
    )
    webhook_event_retention: float = setting(
        7 * 86400.0,
        "seconds delivered and failed events are kept once settled, to be listed and "
        "redelivered (each keeps the call as sent, in memory on the embedded store)",
    )
    scheduler_interval: float = setting(
        0.5,
        "seconds between two looks for due scheduled calls, and between two passes of the "
        "batch dispatcher",
        section="Scheduled and batch calls",
    )
    batch_concurrency: int = setting(
        20,
        "batch calls of one organization under way at once, at most (a batch's "
        "`concurrency_limit` may lower it for the batch)",
    )
    quota_calls: int = setting(
        0,
        "calls one organization may hold; past it, creates are 429 (0: no limit)",
        section="Quotas, idempotency and rate limits",
    )
    quota_bytes: int = setting(
        0,
        "bytes (as JSON) one organization's calls may take; past it, creates and growing "
        "changes are 429 (0: no limit)",
    )
    idempotency_ttl: float = setting(
        86400.0, "seconds an `Idempotency-Key`'s first answer is kept and replayed"
    )
    rate_limit_per_key: int = setting(
        0, "requests a minute per API key; past it, 429 with `Retry-After` (0: off)"
    )
    rate_limit_per_organization: int = setting(
        0, "requests a minute per organization, all its keys together (0: off)"
    )
    rate_limit_auth_failures: int = setting(
        300, "failed authentications a minute per client network, /24 or /64 (0: off)"
    )
    max_header_bytes: int = setting(
        16_384,
        "bytes of a request's line and headers; past it, 431",
        section="HTTP layer, TLS and proxies",
    )
    max_headers: int = setting(100, "header fields of a request; past it, 431")
    header_timeout: float = setting(
        10.0, "seconds a client has to send a request's headers; then 408 and closed"
    )
    body_timeout: float = setting(
        30.0, "seconds a client has to send a request's body; then 408 and closed"
    )
    max_connections: int = setting(
        2048, "connections open at once; past it, new ones are closed unread"
    )
    keep_alive_timeout: float = setting(5.0, "seconds an idle keep-alive connection is kept")
    max_connections_per_address: int = setting(
        256,
        "connections open at once from one client address (an IPv6 /64 counts as one; trusted "
        "proxies are not capped); past it, new ones are closed unread",
    )
    send_timeout: float = setting(
        60.0,
        "seconds a client has to take an answer the server could not send at once; then the "
        "connection is cut",
    )
    max_buffered_bytes: int = setting(
        256 * 1024 * 1024,
        "bytes of answers waiting for slow clients, all connections together; past it, the "
        "connections waiting longest are cut",
    )
    tls_certfile: str | None = setting(
        None,
        "PEM certificate chain: the server speaks https (with the key file: both, or neither)",
    )
    tls_keyfile: str | None = setting(None, "PEM private key of that certificate")
    forwarded_allow_ips: str = setting(
        "",
        "behind a reverse proxy: the proxies whose `X-Forwarded-For`/`-Proto` headers are "
        "believed (comma-separated, or `*`); unset: none, the peer is the client",
    )
    metrics_port: int = setting(
        0,
        "Prometheus metrics on a port of their own, without auth (worker i of `serve "
        "--workers` on this port + i); 0: at `/metrics` on the API's port, behind the admin "
        "token (see [Metrics](operations.md#metrics))",
        section="Metrics",
    )
    metrics_host: str = setting("127.0.0.1", "the address the metrics port listens on")
    console: bool = setting(
        True,
        "the calls console, a web page for people at `/console/` (see [Console](console.md)): "
        "it signs in with an organization's key pair and calls the API like any client; its "
        "files are public, the API's answers are not (`false`: no console, 404)",
        section="Console",
    )
    mcp_url: str = setting(
        "http://127.0.0.1:8080/api",
        "`calls-server mcp` and `calls-server sandbox`: the Calls API they call (`--url`; "
        "see [MCP server](mcp.md) and [Starting from a known state]"
        "(sandbox.md#starting-from-a-known-state))",
        section="MCP server (`calls-server mcp`)",
    )
    mcp_api_key: str | None = setting(
        None, "`calls-server mcp` and `sandbox`: the organization's API key they call with"
    )
    mcp_api_secret: str | None = setting(
        None, "`calls-server mcp` and `sandbox`: that key's secret"
    )
    mcp_read_only: bool = setting(
        False, "`calls-server mcp`: only the operations that read (GET) are tools (`--read-only`)"
    )
    mcp_host: str = setting(
        "127.0.0.1",
        "`calls-server mcp --transport http`: the address it listens on (`mcp --host`)",
    )
    mcp_port: int = setting(8090, "`calls-server mcp --transport http`: the port (`mcp --port`)")
    mcp_token: str | None = setting(
        None,
        "bearer token MCP clients must send over HTTP, 16+ characters; unset: no HTTP transport",
    )
    mcp_allowed_hosts: str = setting(
        "",
        "Host names the MCP server answers over HTTP, comma-separated (`name`, any port, or "
        "`name:port`); others get 403; unset: `localhost`, `127.0.0.1` and `[::1]`, and the "
        "bound host:port",
    )
    mcp_allowed_origins: str = setting(
        "",
        "browser origins the MCP server answers over HTTP, comma-separated "
        "(`scheme://host[:port]`); a request with another `Origin` gets 403; unset: none",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", self.log_level.lower())
        object.__setattr__(self, "enum_case", self.enum_case.lower())
        if not 0 < self.port < 65536:
            raise SettingsError(f"{PREFIX}PORT must be between 1 and 65535, not {self.port}")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise SettingsError(f"{PREFIX}ADMIN_TOKEN must be at least 16 characters long")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"{PREFIX}MAX_BODY_BYTES must be at least 1024")
        if self.compact_every < 1:
            raise SettingsError(f"{PREFIX}COMPACT_EVERY must be at least 1")
        livekit = (self.livekit_url, self.livekit_api_key, self.livekit_api_secret)
        if any(livekit) and not all(livekit):
            raise SettingsError(
                f"{PREFIX}LIVEKIT_URL, {PREFIX}LIVEKIT_API_KEY and {PREFIX}LIVEKIT_API_SECRET "
                "go together: set all three, or none"
            )
        if self.livekit_token_ttl < 60:
            raise SettingsError(f"{PREFIX}LIVEKIT_TOKEN_TTL must be at least 60 seconds")
        if "{call_id}" not in self.livekit_identity:
            raise SettingsError(f"{PREFIX}LIVEKIT_IDENTITY must contain {{call_id}}")
        if bool(self.dialer_url) != bool(self.dialer_secret):
            raise SettingsError(
                f"{PREFIX}DIALER_URL and {PREFIX}DIALER_SECRET go together: set both, or neither"
            )
        if self.sandbox and self.dialer_url:
            raise SettingsError(
                f"{PREFIX}SANDBOX and {PREFIX}DIALER_URL exclude each other: the sandbox is the "
                "dialer"
            )
        if not 0 < self.sandbox_time_scale <= 100:
            raise SettingsError(f"{PREFIX}SANDBOX_TIME_SCALE must be in (0, 100]")
        if not 0 < self.dialer_timeout <= 60 or not 1 <= self.dialer_attempts <= 10:
            raise SettingsError(
                f"{PREFIX}DIALER_TIMEOUT must be in (0, 60] seconds and "
                f"{PREFIX}DIALER_ATTEMPTS between 1 and 10"
            )
        if not 0 < self.dialer_deadline <= 120:
            raise SettingsError(f"{PREFIX}DIALER_DEADLINE must be in (0, 120] seconds")
        if not 1 <= self.dialer_concurrency <= 256:
            raise SettingsError(f"{PREFIX}DIALER_CONCURRENCY must be between 1 and 256")
        if not 0.05 <= self.scheduler_interval <= 60:
            raise SettingsError(f"{PREFIX}SCHEDULER_INTERVAL must be between 0.05 and 60 seconds")
        if not 1 <= self.batch_concurrency <= 10_000:
            raise SettingsError(f"{PREFIX}BATCH_CONCURRENCY must be between 1 and 10000")
        try:
            EgressPolicy.parse_networks(self.webhook_allow_networks)
        except ValueError as e:
            raise SettingsError(f"{PREFIX}WEBHOOK_ALLOW_NETWORKS: {e}") from None
        if not 1 <= self.webhooks_per_organization <= 1000:
            raise SettingsError(f"{PREFIX}WEBHOOKS_PER_ORGANIZATION must be between 1 and 1000")
        if not 1 <= self.webhook_concurrency <= 256:
            raise SettingsError(f"{PREFIX}WEBHOOK_CONCURRENCY must be between 1 and 256")
        if not 1 <= self.webhook_connections_per_endpoint <= self.webhook_concurrency:
            raise SettingsError(
                f"{PREFIX}WEBHOOK_CONNECTIONS_PER_ENDPOINT must be between 1 and "
                f"{PREFIX}WEBHOOK_CONCURRENCY"
            )
        if not 0 < self.webhook_timeout <= 60:
            raise SettingsError(f"{PREFIX}WEBHOOK_TIMEOUT must be in (0, 60] seconds")
        if not 0 < self.webhook_retry_first_delay <= self.webhook_retry_max_delay:
            raise SettingsError(
                f"{PREFIX}WEBHOOK_RETRY_FIRST_DELAY must be more than 0 and at most "
                f"{PREFIX}WEBHOOK_RETRY_MAX_DELAY"
            )
        for name in ("webhook_retry_for", "webhook_disable_after", "webhook_event_retention"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be more than 0 seconds")
        if self.enum_case not in MODES:
            raise SettingsError(f"{PREFIX}ENUM_CASE must be one of {', '.join(MODES)}")
        if self.quota_calls < 0 or self.quota_bytes < 0:
            raise SettingsError(f"{PREFIX}QUOTA_CALLS and {PREFIX}QUOTA_BYTES must be 0 or more")
        if self.database_url is not None and not _is_conninfo(self.database_url):
            raise SettingsError(
                f"{PREFIX}DATABASE_URL must be a PostgreSQL connection URL "
                "(postgresql://user:password@host:5432/database) or libpq key=value string"
            )
        if not 1 <= self.database_pool_size <= 1000:
            raise SettingsError(f"{PREFIX}DATABASE_POOL_SIZE must be between 1 and 1000")
        if not 0.1 <= self.database_statement_timeout <= 3600:
            raise SettingsError(
                f"{PREFIX}DATABASE_STATEMENT_TIMEOUT must be between 0.1 and 3600 seconds"
            )
        if self.idempotency_ttl < 60:
            raise SettingsError(f"{PREFIX}IDEMPOTENCY_TTL must be at least 60 seconds")
        for name in (
            "rate_limit_per_key",
            "rate_limit_per_organization",
            "rate_limit_auth_failures",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be 0 (no limit) or more")
        if not 1024 <= self.max_header_bytes <= 1_048_576 or not 10 <= self.max_headers <= 1000:
            raise SettingsError(
                f"{PREFIX}MAX_HEADER_BYTES must be between 1024 and 1048576 and "
                f"{PREFIX}MAX_HEADERS between 10 and 1000"
            )
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "send_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise SettingsError(f"{PREFIX}{name.upper()} must be in (0, 3600] seconds")
        if self.max_connections < 1:
            raise SettingsError(f"{PREFIX}MAX_CONNECTIONS must be at least 1")
        if self.max_connections_per_address < 1:
            raise SettingsError(f"{PREFIX}MAX_CONNECTIONS_PER_ADDRESS must be at least 1")
        if self.max_buffered_bytes < 1_048_576:
            raise SettingsError(f"{PREFIX}MAX_BUFFERED_BYTES must be at least 1048576 (1 MiB)")
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise SettingsError(
                f"{PREFIX}TLS_CERTFILE and {PREFIX}TLS_KEYFILE go together: set both, or neither"
            )
        if not 0 <= self.metrics_port < 65536 or (
            self.metrics_port and self.metrics_port == self.port
        ):
            raise SettingsError(
                f"{PREFIX}METRICS_PORT must be 0 (the API's port) or another port up to 65535"
            )
        if not 1 <= self.workers <= 256:
            raise SettingsError(f"{PREFIX}WORKERS must be between 1 and 256")
        if self.workers > 1 and not self.database_url:
            raise SettingsError(
                f"{PREFIX}WORKERS above 1 needs {PREFIX}DATABASE_URL: the embedded store in a "
                "data directory is served by one process (it holds the directory's lock, and "
                "its indexes live in that process's memory). Run one process on the embedded "
                f"store, or set {PREFIX}DATABASE_URL=postgresql://... for several"
            )
        if self.metrics_port and not (
            self.metrics_port + self.workers <= 65536
            and not self.metrics_port <= self.port < self.metrics_port + self.workers
        ):
            raise SettingsError(
                f"{PREFIX}METRICS_PORT: worker i serves its metrics on METRICS_PORT + i, so "
                f"ports {self.metrics_port}..{self.metrics_port + self.workers - 1} must be "
                "free of the API's port and at most 65535"
            )
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise SettingsError(
                f"{PREFIX}LOG_LEVEL must be one of critical, error, warning, info, debug"
            )
        if not 0 < self.mcp_port < 65536:
            raise SettingsError(f"{PREFIX}MCP_PORT must be between 1 and 65535")
        if self.mcp_token is not None and len(self.mcp_token) < 16:
            raise SettingsError(f"{PREFIX}MCP_TOKEN must be at least 16 characters long")
        try:
            _host_list(self.mcp_allowed_hosts)
        except ValueError as e:
            raise SettingsError(
                f"{PREFIX}MCP_ALLOWED_HOSTS: {e} (each a name or name:port, comma-separated)"
            ) from None
        try:
            _origin_list(self.mcp_allowed_origins)
        except ValueError as e:
            raise SettingsError(
                f"{PREFIX}MCP_ALLOWED_ORIGINS: {e} (each scheme://host[:port], comma-separated)"
            ) from None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: os.environ), then `overrides` that are not None."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = PREFIX + field.name.upper()
            if name in environ:
                values[field.name] = _parse(name, environ[name], _parser(hints[field.name]))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def describe(cls, name: str) -> str:
        """What the field `name` means (Markdown), as docs/configuration.md says it."""
        return str(cls.__dataclass_fields__[name].metadata["doc"])

    def open_store(self) -> Store:
        """The store these settings name: the PostgreSQL database, or the data directory.
        The caller closes it."""
        quota = Quota(max_calls=self.quota_calls, max_bytes=self.quota_bytes)
        if self.database_url:
            # psycopg is imported by the servers that use it (a tenth of a second of every
            # start and command otherwise).
            from calls_server.storage.postgres import PostgresStore

            return PostgresStore(
                self.database_url,
                quota=quota,
                max_connections=self.database_pool_size,
                statement_timeout=self.database_statement_timeout,
            )
        from calls_server.storage.embedded import EmbeddedStore

        return EmbeddedStore(self.data_dir, compact_every=self.compact_every, quota=quota)

    def dialer(self) -> HttpDialer | None:
        """The outbound dialer phone calls are handed to, if one is configured."""
        if not (self.dialer_url and self.dialer_secret):
            return None
        from calls_server.integrations.dialer import HttpDialer

        return HttpDialer(
            self.dialer_url,
            self.dialer_secret,
            self.dialer_timeout,
            self.dialer_attempts,
            deadline=self.dialer_deadline,
            idempotent=self.dialer_idempotent,
        )

    def public_host(self) -> str:
        """The host this server is reached at on its own machine (for URLs it hands out)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def webhook_retries(self) -> RetryPolicy:
        """When failed webhook deliveries are retried, given up, and endpoints switched off."""
        return RetryPolicy(
            first_delay=self.webhook_retry_first_delay,
            max_delay=self.webhook_retry_max_delay,
            give_up_after=self.webhook_retry_for,
            disable_after=self.webhook_disable_after,
        )

    def egress(self) -> EgressPolicy:
        """Where webhooks may be sent."""
        return EgressPolicy(
            allow_http=self.webhook_allow_http,
            allowed_networks=EgressPolicy.parse_networks(self.webhook_allow_networks),
        )

    def livekit_rooms(self) -> LiveKitRooms | None:
        """The LiveKit server web calls use, if one is configured."""
        if not (self.livekit_url and self.livekit_api_key and self.livekit_api_secret):
            return None
        from calls_server.integrations.livekit import LiveKitRooms

        return LiveKitRooms(
            self.livekit_url,
            self.livekit_api_key,
            self.livekit_api_secret,
            self.livekit_token_ttl,
            self.livekit_identity,
        )

    def mcp_hosts(self) -> frozenset[tuple[str, int | None]]:
        """The Host headers the MCP server answers over HTTP, as (name, port) pairs, a port of
        None standing for any: those configured, or else the loopback names and the bound
        host:port. A name not listed (a DNS-rebinding page's own) is refused."""
        if self.mcp_allowed_hosts.strip():
            return frozenset(_host_list(self.mcp_allowed_hosts))
        hosts: set[tuple[str, int | None]] = {(name, None) for name in LOOPBACK_HOSTS}
        bound = self.mcp_host.strip().lower()
        if ":" in bound and not bound.startswith("["):
            bound = f"[{bound}]"
        if bound not in ("", "0.0.0.0", "[::]", *LOOPBACK_HOSTS):  # all interfaces: no name
            hosts.add((bound, self.mcp_port))
        return frozenset(hosts)

    def mcp_origins(self) -> frozenset[str]:
        """The browser origins the MCP server answers over HTTP (normalized, see
        `normalize_origin`); none unless configured."""
        return frozenset(_origin_list(self.mcp_allowed_origins))


# The configuration page: how the variables and the flags relate, then a table per section.
REFERENCE_COMMAND = "calls-server settings --markdown > docs/configuration.md"
REFERENCE_INTRO = (
    "Environment variables, overridden by the flags of `calls-server [--data-dir DIR] serve "
    "[--host H] [--port P] [--log-level L] [--workers N]`. A bad value stops the server with a "
    "message naming it."
)


def reference_markdown() -> str:
    """docs/configuration.md: every setting's variable, default and meaning, from `Settings`."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from calls_server/settings.py by `{REFERENCE_COMMAND}`:",
        "     edit the descriptions there, not here. -->",
        "",
        REFERENCE_INTRO,
    ]
    for field in dataclasses.fields(Settings):
        if "section" in field.metadata:
            lines += ["", f"## {field.metadata['section']}", ""]
            lines += ["| variable | default | meaning |", "|---|---|---|"]
        variable = f"`{PREFIX}{field.name.upper()}`"
        meaning = field.metadata["doc"].replace("|", "\\|")
        lines.append(f"| {variable} | {environment_default(field.default)} | {meaning} |")
    return "\n".join(lines) + "\n"


def environment_default(value: Any) -> str:
    """A default as its variable would be set to it (`true`, `30`), in Markdown; `unset` for
    None and the empty string."""
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"`{text}`"


# The names of this machine's loopback interface, as they appear in a Host header.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_HOST = re.compile(
    r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::(?P<port>[0-9]{1,5}))?"
)
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<host>[^/?#@\s]+)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's value (`name` or `name:port`, an IPv6 address in brackets) as its
    lower-cased name and port (None without one); ValueError if it is not one."""
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f"{value!r} is not a host name or address, with an optional :port")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has a port outside 1..65535")
    return match["name"], None if port is None else int(port)


def normalize_origin(value: str) -> str:
    """An Origin (`scheme://host[:port]`, http or https) lower-cased, without a default
    port or a trailing slash, as browsers send it; ValueError if it is not one."""
    match = _ORIGIN.fullmatch(value.strip().lower().removesuffix("/"))
    if match is None:
        raise ValueError(f"{value!r} is not an origin: http:// or https://, a host, no path")
    scheme = match["scheme"]
    name, port = split_host(match["host"])
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{name}"
    return f"{scheme}://{name}:{port}"


def _host_list(text: str) -> list[tuple[str, int | None]]:
    return [split_host(item) for item in text.split(",") if item.strip()]


def _origin_list(text: str) -> list[str]:
    return [normalize_origin(item) for item in text.split(",") if item.strip()]


def _is_conninfo(text: str) -> bool:
    """Whether `text` is a PostgreSQL connection string libpq reads (a URL or key=value)."""
    if not text.startswith(("postgresql://", "postgres://")) and "=" not in text:
        return False
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        return False
    return True


def _parse(name: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except ValueError as e:
        raise SettingsError(f"{name}={raw!r} is not valid: {e}") from None


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _optional(raw: str) -> str | None:
    return raw or None


def _parser(annotation: Any) -> Callable[[str], Any]:
    """How an environment variable's text becomes a value of a field's type."""
    if annotation == str | None:
        return _optional
    if annotation is bool:
        return _boolean
    if annotation in (str, int, float, Path):
        parse: Callable[[str], Any] = annotation
        return parse
    raise TypeError(f"no parser for settings of type {annotation}")
