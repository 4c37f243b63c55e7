"""The server's settings: read once from the environment (flags override), typed, checked."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calls_server.domain.casing import MODES
from calls_server.domain.quotas import Quota
from calls_server.domain.webhooks import RetryPolicy
from calls_server.integrations.dialer import HttpDialer
from calls_server.integrations.egress import EgressPolicy
from calls_server.integrations.livekit import LiveKitRooms
from calls_server.storage import EmbeddedStore, Store

PREFIX = "CALLS_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Everything that can be configured. Each field is also `CALLS_<FIELD>` in the environment."""

    data_dir: Path = Path("calls-data")
    # A PostgreSQL database instead of the embedded store (postgresql://user:pw@host/db):
    # for more than one server process or machine. Unset: the embedded store in data_dir.
    database_url: str | None = None
    # Connections per server process to that database, at most.
    database_pool_size: int = 10
    # Seconds a statement may run (the database's statement_timeout); a store call whose
    # database does not answer (stopped, hung) is cut on this side 5 s later.
    database_statement_timeout: float = 30.0
    # Server processes sharing the port (`serve --workers`): above 1 only on PostgreSQL.
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer token for /api/organizations...; None disables the admin API.
    admin_token: str | None = None
    # Largest request body accepted; larger ones are answered 413.
    max_body_bytes: int = 1_048_576
    # Validate every response against openapi.yaml (on in tests; costs time per request).
    validate_responses: bool = False
    log_level: str = "info"
    # Log lines as JSON objects (one per line) instead of text.
    log_json: bool = False
    # The access log: one line per request (method, path, status, duration, request id,
    # organization, client address), at INFO.
    log_access: bool = True
    # Browser origins allowed to call the API (CORS), comma-separated; empty: none.
    cors_origins: str = ""
    # Journal records between two snapshots of the embedded store.
    compact_every: int = 10_000
    # A LiveKit server for web calls: URL, API key and secret together, or none of them.
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    livekit_token_ttl: int = 3600
    livekit_identity: str = "web-user-{call_id}"
    # The operator's outbound dialer: URL and signing secret together, or neither.
    dialer_url: str | None = None
    dialer_secret: str | None = None
    dialer_timeout: float = 5.0
    dialer_attempts: int = 3
    # Seconds one dial may take, every attempt and back-off included; create-phone-call
    # waits no longer for a dial slot and the dial together (past it: call_failed).
    dialer_deadline: float = 10.0
    # The dialer places one call per Idempotency-Key (keeping the keys it has seen): a batch
    # attempt whose dial a restart interrupted is dialed again under its key, not failed.
    dialer_idempotent: bool = False
    # The sandbox dialer instead of a real one: calls play out by themselves, with outcomes
    # scripted per call in metadata or drawn under the seed; waits times the time scale.
    sandbox: bool = False
    sandbox_seed: int = 0
    sandbox_time_scale: float = 1.0
    # Phone calls being handed to the dialer at once, at most (each holds a worker thread).
    dialer_concurrency: int = 8
    # Deliver status events to webhooks (off for sandboxes whose webhooks must stay quiet).
    webhook_delivery: bool = True
    # Accept http:// webhook URLs (for loopback and testing); https:// only otherwise.
    webhook_allow_http: bool = False
    # Private networks webhooks may go to (CIDRs, comma-separated): on-premises receivers,
    # or 127.0.0.0/8 for tests. Public addresses are always allowed.
    webhook_allow_networks: str = ""
    # How many webhooks one organization may have.
    webhooks_per_organization: int = 16
    # Deliveries under way at once: for all webhooks together, and for one webhook (each
    # call's events still go one at a time, in order).
    webhook_concurrency: int = 16
    webhook_connections_per_endpoint: int = 8
    # Seconds a receiver has to answer one delivery.
    webhook_timeout: float = 5.0
    # Retries: the first after this many seconds, each later one after twice the previous
    # wait, at most the max; an event is given up (marked failed, kept) once retrying it
    # would go on past `webhook_retry_for` seconds since it was queued.
    webhook_retry_first_delay: float = 30.0
    webhook_retry_max_delay: float = 3600.0
    webhook_retry_for: float = 3 * 86400.0
    # A webhook whose every delivery has failed for this many seconds is switched off.
    webhook_disable_after: float = 3 * 86400.0
    # Seconds delivered and failed events are kept once settled (to be listed and
    # redelivered). Each keeps the call as sent, in memory on the embedded store.
    webhook_event_retention: float = 7 * 86400.0
    # Seconds between two looks for due scheduled calls and batch tasks (with a dialer).
    scheduler_interval: float = 0.5
    # Batch calls of one organization under way at once, at most (a batch's own
    # concurrency_limit may lower it for that batch).
    batch_concurrency: int = 20
    # How responses case enum values (call_status, call_type, direction): `upstream` (UPPER
    # where upstream shows calls as listed, lower elsewhere), `lower` or `upper` throughout.
    enum_case: str = "upstream"
    # Per organization: at most this many calls, and this many bytes of calls (0: no limit).
    quota_calls: int = 0
    quota_bytes: int = 0
    # Idempotency-Key: seconds a key's first answer is kept and replayed (24 h, as Stripe).
    idempotency_ttl: float = 86400.0
    # Rate limits, requests per minute (0: no limit): per API key, per organization (all its
    # keys together), and failed authentications per client address.
    rate_limit_per_key: int = 0
    rate_limit_per_organization: int = 0
    rate_limit_auth_failures: int = 300
    # The HTTP layer: the most bytes and lines of request headers; seconds a client has to
    # send a request's headers, and its body; connections open at once (past it, new ones
    # are closed at once); seconds an idle keep-alive connection is kept.
    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2048
    keep_alive_timeout: float = 5.0
    # Connections open at once from one client address (an IPv6 client's /64; trusted
    # proxies are not capped); seconds a client has to take an answer the server could not
    # send at once, before it is cut; bytes of such unsent answers, all connections
    # together, past which the connections that have waited longest are cut.
    max_connections_per_address: int = 256
    send_timeout: float = 60.0
    max_buffered_bytes: int = 256 * 1024 * 1024
    # TLS terminated by the server: certificate chain and key files (PEM), both or neither.
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    # Behind a reverse proxy: the proxies' addresses (comma-separated, or *) whose
    # X-Forwarded-For/-Proto headers are believed; empty: none (the peer is the client).
    forwarded_allow_ips: str = ""
    # Prometheus metrics: on a port of their own (0: at /metrics on the API's port, behind
    # the admin token), at the host given.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # `calls-server mcp`: the Calls API its tools call, and the organization's key pair they
    # call it with.
    mcp_url: str = "http://127.0.0.1:8080/api"
    mcp_api_key: str | None = None
    mcp_api_secret: str | None = None
    # `calls-server mcp`: only the operations that read (GET) are tools.
    mcp_read_only: bool = False
    # `calls-server mcp --transport http`: the address and port it listens on; the bearer
    # token its clients must send (16+ characters; without one it does not start over HTTP);
    # the Host names it answers to, comma-separated, each `name` (any port) or `name:port`
    # (empty: localhost, 127.0.0.1 and [::1], and the bound host:port); the browser origins
    # it answers, comma-separated `scheme://host[:port]` (empty: none, so a request carrying
    # an Origin is refused).
    mcp_host: str = "127.0.0.1"
    mcp_port: int = 8090
    mcp_token: str | None = None
    mcp_allowed_hosts: str = ""
    mcp_allowed_origins: str = ""

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
        return EmbeddedStore(self.data_dir, compact_every=self.compact_every, quota=quota)

    def dialer(self) -> HttpDialer | None:
        """The outbound dialer phone calls are handed to, if one is configured."""
        if not (self.dialer_url and self.dialer_secret):
            return None
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
