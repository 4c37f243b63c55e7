"""The `calls-server` command: run the server, and manage organizations and keys offline.

The key commands open the data directory themselves, so they work while no server is
running on it (a running server holds its lock: use the admin API then).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from calls_server.domain import keys
from calls_server.domain.errors import ApiError, DuplicateId
from calls_server.integrations.clock import wall_clock
from calls_server.logs import log_config
from calls_server.settings import Settings, SettingsError, reference_markdown
from calls_server.storage import (
    CorruptJournal,
    DatabaseNotEmpty,
    DataDirectoryLocked,
    EmbeddedStore,
    Store,
)
from calls_server.storage.journal import salvage


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `calls-server`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.load(
            data_dir=args.data_dir,
            **{
                name: getattr(args, name, None) for name in ("host", "port", "log_level", "workers")
            },
        )
        command: Callable[[argparse.Namespace, Settings], int] = args.command
        return command(args, settings)
    except (SettingsError, DataDirectoryLocked, DatabaseNotEmpty, CorruptJournal) as e:
        print(f"calls-server: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(f"calls-server: {e.message}: {e.error}", file=sys.stderr)
        return 1


# Young-generation collections every 10,000 net allocations instead of 700: each request
# allocates hundreds of containers (a call is dozens), and call records form no cycles.
GC_THRESHOLDS = (10_000, 20, 100)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP server until SIGINT/SIGTERM; in-flight requests finish first."""
    # The web stack is imported by the command that serves, not by every command (`--help`,
    # `create-org`, ... answer in a fraction of the time).
    import uvicorn

    from calls_server.app import create_app
    from calls_server.http_protocol import HttpLimits, LimitedHttpToolsProtocol

    logging.config.dictConfig(
        log_config(settings.log_level, settings.log_json, settings.log_access)
    )
    fresh = settings.database_url is None and (
        not settings.data_dir.exists() or not any(settings.data_dir.iterdir())
    )
    if args.listen_fd is None and settings.workers > 1:
        return _serve_workers(args, settings)
    store = _open(settings)
    if args.create_org:
        _first_key(store, args.create_org, settings)
    elif fresh:
        print(FIRST_RUN.format(data_dir=settings.data_dir), file=sys.stderr)
    where = "in the database" if settings.database_url else f"in {settings.data_dir.resolve()}"
    scheme = "https" if settings.tls_certfile else "http"
    banner = (
        f"Calls API on {scheme}://{settings.host}:{settings.port}/api "
        f"(Swagger UI: /api/ui/), data {where}"
    )
    # What the store loaded lives as long as the process: keep it out of the cyclic
    # collector's full passes, which would otherwise walk every stored call (pauses of
    # hundreds of milliseconds at 100k calls).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        app = create_app(settings, store)
        if args.listen_fd is None:
            print(banner, file=sys.stderr)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again:
        # let that end the server with an exception here instead of killing the process,
        # so the store still gets closed (a last snapshot, the lock released).
        signal.signal(signal.SIGTERM, _stop)
        config = uvicorn.Config(
            app,
            # httptools, with limits on header size and count, header and body timeouts
            # and open connections (see calls_server/http_protocol.py).
            http=LimitedHttpToolsProtocol.with_limits(HttpLimits.from_settings(settings)),
            **_uvicorn_options(settings),
        )
        server = uvicorn.Server(config)
        if args.listen_fd is None:
            server.run()
        else:  # a worker: on the socket its parent bound (see _serve_workers)
            server.run(sockets=[socket.socket(fileno=args.listen_fd)])
        if not server.started:
            return 1
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        store.close()
    return 0


# A worker that exits by itself is started again, at most this often (seconds).
RESTART_DELAY = 1.0


def _serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """Run `settings.workers` server processes on one listening socket (bound here, each
    worker accepting on it), all on the PostgreSQL database; restart a worker that dies;
    on SIGINT/SIGTERM stop them all (each finishes its requests) and return."""
    if args.create_org:  # once, before the workers start
        store = _open(settings)
        try:
            _first_key(store, args.create_org, settings)
        finally:
            store.close()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listening = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    listening.set_inheritable(True)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(settings.data_dir)]
        command += ["serve", "--listen-fd", str(listening.fileno())]
        command += ["--log-level", settings.log_level, "--workers", "1"]
        env = dict(os.environ)
        if settings.metrics_port:
            env["CALLS_METRICS_PORT"] = str(settings.metrics_port + index)
        return subprocess.Popen(command, pass_fds=[listening.fileno()], env=env)

    workers = [start(index) for index in range(settings.workers)]
    scheme = "https" if settings.tls_certfile else "http"
    print(
        f"Calls API on {scheme}://{settings.host}:{settings.port}/api "
        f"(Swagger UI: /api/ui/), {settings.workers} workers, data in the database",
        file=sys.stderr,
    )
    try:
        while not stopping.wait(0.2):
            for index, worker in enumerate(workers):
                if worker.poll() is not None and not stopping.is_set():
                    print(
                        f"calls-server: worker {index} (pid {worker.pid}) exited with "
                        f"{worker.returncode}; starting it again",
                        file=sys.stderr,
                    )
                    time.sleep(RESTART_DELAY)
                    workers[index] = start(index)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait()
        listening.close()
    return 0


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # The access log is calls_server.middleware.EveryAnswer's, with the request's fields:
        # uvicorn's own (no fields) would write a second line per request.
        "access_log": False,
        "log_config": log_config(settings.log_level, settings.log_json, settings.log_access),
        "timeout_graceful_shutdown": 30,
        "server_header": False,
        "date_header": True,
        # Typed int, but uvicorn only hands it to loop.call_later, which takes seconds.
        "timeout_keep_alive": settings.keep_alive_timeout,
        "ssl_certfile": settings.tls_certfile,
        "ssl_keyfile": settings.tls_keyfile,
        # Without trusted proxies uvicorn's proxy-headers middleware is left out, so
        # X-Forwarded-For/-Proto are ignored (passing None would trust 127.0.0.1, or
        # $FORWARDED_ALLOW_IPS).
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }


FIRST_RUN = """\
This data directory ({data_dir}) is new: it has no organization and no API key yet.
To get a key pair, stop the server and run `calls-server create-org --id acme`, or start
it with `calls-server serve --create-org acme`, which creates both and prints them once."""


def _first_key(store: Store, organization_id: str, settings: Settings) -> None:
    """Create `organization_id` with a key pair and print them once, with a first request;
    an organization that exists already is left as it is."""
    try:
        store.add_organization(keys.new_organization(wall_clock(), organization_id))
    except DuplicateId:
        print(f"Organization {organization_id!r} exists already: no new key.", file=sys.stderr)
        return
    key = _add_key(store, organization_id, "first key")
    base = f"http://{settings.host}:{settings.port}/api"
    print(
        f"Organization {organization_id!r} created with a key pair. {keys.SECRET_WARNING}\n"
        f"  export KEY={key['api_key']} SECRET={key['api_secret']}\n"
        f'  curl -s {base}/calls/create -H "X-API-KEY: $KEY" -H "X-API-SECRET: $SECRET" '
        "-H 'Content-Type: application/json' -d '{\"agent_id\": \"agent-123\"}'",
        file=sys.stderr,
    )


class _Stopped(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def create_org(args: argparse.Namespace, settings: Settings) -> int:
    """Create an organization and its first API key pair."""
    store = _open(settings)
    try:
        organization = keys.new_organization(wall_clock(), args.id, args.name)
        store.add_organization(organization)
        key = _add_key(store, organization["organization_id"], args.key_name)
    finally:
        store.close()
    _print({"organization": organization, "api_key": key})
    print(keys.SECRET_WARNING, file=sys.stderr)
    return 0


def create_key(args: argparse.Namespace, settings: Settings) -> int:
    """Create another API key pair for an organization."""
    store = _open(settings)
    try:
        key = _add_key(store, args.organization_id, args.name)
    finally:
        store.close()
    _print(key)
    print(keys.SECRET_WARNING, file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace, settings: Settings) -> int:
    """List an organization's keys, without secrets."""
    store = _open(settings)
    try:
        found = [keys.public_view(k) for k in store.list_api_keys(args.organization_id)]
    finally:
        store.close()
    _print(found)
    return 0


def revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    """Revoke one key of an organization."""
    store = _open(settings)
    try:
        now = wall_clock()
        key = store.change_api_key(
            args.organization_id, args.api_key_id, lambda k: keys.revoked(k, now)
        )
    finally:
        store.close()
    _print(keys.public_view(key))
    return 0


def mcp(args: argparse.Namespace, settings: Settings) -> int:
    """Serve a Calls server's operations to MCP clients (agents) as tools."""
    import dataclasses

    flags = {
        "mcp_url": args.url,
        "mcp_host": args.mcp_host,
        "mcp_port": args.mcp_port,
        "mcp_read_only": args.read_only,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in flags.items() if v is not None})
    if not (settings.mcp_api_key and settings.mcp_api_secret):
        print(
            "calls-server: the MCP server needs the organization's key pair: set "
            "CALLS_MCP_API_KEY and CALLS_MCP_API_SECRET",
            file=sys.stderr,
        )
        return 2
    if args.transport == "http" and not settings.mcp_token:
        print(MCP_TOKEN_NEEDED, file=sys.stderr)
        return 2
    try:
        from calls_server.mcp import build_server, run_http
    except ImportError:
        print(
            "calls-server: the MCP server needs the `mcp` extra: pip install 'calls-server[mcp]'",
            file=sys.stderr,
        )
        return 2
    server = build_server(
        settings.mcp_url,
        settings.mcp_api_key,
        settings.mcp_api_secret,
        read_only=settings.mcp_read_only,
    )
    if args.transport == "stdio":
        server.run(transport="stdio", show_banner=False)
    else:
        run_http(server, settings)
    return 0


MCP_TOKEN_NEEDED = """\
calls-server: the MCP server over HTTP answers only clients that send its bearer token: set
CALLS_MCP_TOKEN (16+ characters), e.g.
  export CALLS_MCP_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
and give the client `Authorization: Bearer $CALLS_MCP_TOKEN`. (stdio needs no token.)"""


def recover(args: argparse.Namespace, settings: Settings) -> int:
    """Salvage everything readable of a damaged data directory into a new one."""
    try:
        with _working(f"Recovering {settings.data_dir.name}", after=0.0):
            report = salvage(settings.data_dir, args.to)
    except FileExistsError as e:
        print(f"calls-server: {e}", file=sys.stderr)
        return 2
    _print(report)
    print(
        f"Salvaged into {args.to}: {len(report['problems'])} problem(s), listed above. "
        f"Start the server with --data-dir {args.to}.",
        file=sys.stderr,
    )
    return 0


def copy_to_postgres(args: argparse.Namespace, settings: Settings) -> int:
    """Copy the embedded data directory into a PostgreSQL database, verifying the counts."""
    url = args.database_url or settings.database_url
    if not url:
        print(
            "calls-server: copy-to-postgres needs the database: --database-url or "
            "CALLS_DATABASE_URL=postgresql://...",
            file=sys.stderr,
        )
        return 2
    from calls_server.storage.postgres import PostgresStore

    with _working(f"Reading {settings.data_dir.name}", after=0.0):
        source = EmbeddedStore(settings.data_dir, compact_every=settings.compact_every)
    try:
        records = source.export()
        target = PostgresStore(url)
        try:
            with _records_bar(records, "Copying") as counted:
                target.copy_from(counted, replace=args.replace)
            copied = target.record_counts()
        finally:
            target.close()
    finally:
        source.close()
    _print({"copied": copied})
    print(
        f"Copied {settings.data_dir} into the database ({copied['calls']} calls, counts "
        "verified). Start the server with CALLS_DATABASE_URL set to it.",
        file=sys.stderr,
    )
    return 0


def settings_reference(args: argparse.Namespace, settings: Settings) -> int:
    """Print every setting's variable, default and meaning: docs/configuration.md."""
    sys.stdout.write(reference_markdown())
    return 0


# -- the sandbox's state, over HTTP from a running server -------------------------------------


def sandbox_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write the organization's records (exportSandboxState) to a file, or stdout."""
    state = _sandbox_call(args, settings, "GET", "/sandbox/state")
    if state is None:
        return 1
    text = json.dumps(state, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"Wrote the organization's records to {args.out}.", file=sys.stderr)
    return 0


def sandbox_load(args: argparse.Namespace, settings: Settings) -> int:
    """Load a fixture file into the organization (loadSandboxState); print the counts."""
    try:
        fixture = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as e:
        print(f"calls-server: cannot read the fixture {args.file}: {e}", file=sys.stderr)
        return 2
    counts = _sandbox_call(args, settings, "POST", "/sandbox/state", fixture)
    if counts is None:
        return 1
    _print(counts)
    return 0


def sandbox_reset(args: argparse.Namespace, settings: Settings) -> int:
    """Remove every record of the organization (resetSandboxState); print the counts."""
    counts = _sandbox_call(args, settings, "POST", "/sandbox/reset")
    if counts is None:
        return 1
    _print(counts)
    return 0


def _sandbox_call(
    args: argparse.Namespace, settings: Settings, method: str, path: str, body: Any = None
) -> Any:
    """The `data` of the running server's answer to `method path` (under the API's base
    URL), sent with the organization's key pair; None, the API's error printed, if it
    refused or could not be reached."""
    import httpx  # only the commands that call a server load an HTTP client

    url = (args.url or settings.mcp_url).rstrip("/")
    key = args.api_key or settings.mcp_api_key
    secret = args.api_secret or settings.mcp_api_secret
    if not (key and secret):
        print(
            "calls-server: the sandbox commands need the organization's key pair: "
            "--api-key and --api-secret, or CALLS_MCP_API_KEY and CALLS_MCP_API_SECRET",
            file=sys.stderr,
        )
        return None
    headers = {"X-API-KEY": key, "X-API-SECRET": secret}
    try:
        response = httpx.request(
            method, url + path, json=body, headers=headers, timeout=SANDBOX_TIMEOUT
        )
    except httpx.HTTPError as e:
        print(f"calls-server: cannot reach {url}: {e}", file=sys.stderr)
        return None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        said = (
            f"{answer.get('message')}: {answer.get('error')}"
            if isinstance(answer, dict)
            else response.text[:200]
        )
        print(
            f"calls-server: {method} {url + path} answered {response.status_code}: {said}",
            file=sys.stderr,
        )
        return None
    return answer.get("data")


# Seconds a sandbox command waits for the server (a large fixture takes a while to load).
SANDBOX_TIMEOUT = 300.0


def _add_key(store: Store, organization_id: str, name: str | None) -> dict[str, Any]:
    record, secret = keys.new_api_key(organization_id, wall_clock(), name)
    store.add_api_key(record)
    return {**keys.created_view(record), "api_secret": secret}


def _open(settings: Settings) -> Store:
    if settings.database_url:
        return settings.open_store()
    # Opening the embedded store reads its whole journal: seconds, for millions of calls.
    with _working(f"Reading {settings.data_dir.name}"):
        return settings.open_store()


# -- progress, on a terminal only ------------------------------------------------------------

# Seconds a step runs before `_working` shows it: quick ones show nothing.
SHOW_AFTER = 0.5


def _on_terminal() -> bool:
    """Whether progress is shown: only to a person at a terminal. Pipes, files and tests
    see the command's output as it always was."""
    return sys.stderr.isatty()


def _tqdm(**options: Any) -> Any:
    """A tqdm progress bar on stderr. tqdm is imported only when one is shown (it takes a
    twentieth of a second); it ships no type hints."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, **options)


@contextmanager
def _working(description: str, after: float = SHOW_AFTER) -> Iterator[None]:
    """While the block runs, a line on the terminal saying what is being done and for how
    long (shown once it has run `after` seconds, removed when it ends): for steps that report
    no progress of their own, such as reading a data directory. Nothing off a terminal."""
    if not _on_terminal():
        yield
        return
    done = threading.Event()

    def show() -> None:
        if done.wait(after):
            return
        with _tqdm(desc=description, bar_format="{desc}... {elapsed}", leave=False) as line:
            while not done.wait(0.5):  # the work holds the main thread: tick from here
                line.refresh()

    ticking = threading.Thread(target=show, daemon=True)
    ticking.start()
    try:
        yield
    finally:
        done.set()
        ticking.join()


@contextmanager
def _records_bar(
    records: Mapping[str, Sequence[Mapping[str, Any]]], description: str
) -> Iterator[Mapping[str, Sequence[Mapping[str, Any]]]]:
    """`records` (by kind), counted on a progress bar as they are read, each kind named
    while it is; on a terminal only (else `records` themselves)."""
    if not _on_terminal():
        yield records
        return
    total = sum(len(kind) for kind in records.values())
    with _tqdm(total=total, desc=description, unit=" records") as bar:
        yield _CountedRecords(records, bar, description)
        bar.set_description(description, refresh=False)  # done: no kind in particular


class _CountedRecords(Mapping[str, Sequence[Mapping[str, Any]]]):
    """Records by kind, whose reading moves a progress bar on."""

    def __init__(
        self, records: Mapping[str, Sequence[Mapping[str, Any]]], bar: Any, verb: str
    ) -> None:
        self.records, self.bar, self.verb = records, bar, verb

    def __getitem__(self, kind: str) -> Sequence[Mapping[str, Any]]:
        return _Counted(self.records[kind], self.bar, f"{self.verb} {kind}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


class _Counted(Sequence[Mapping[str, Any]]):
    """The records of one kind: iterating them names the kind on the bar and counts each."""

    def __init__(self, records: Sequence[Mapping[str, Any]], bar: Any, label: str) -> None:
        self.records, self.bar, self.label = records, bar, label

    def __getitem__(self, index: Any) -> Any:
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        self.bar.set_description(self.label)
        for record in self.records:
            yield record
            self.bar.update()


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


class _PrintVersion(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for (the
    lookup reads the installed packages' metadata: a cost every command would pay)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import importlib.metadata  # 30 ms: only when asked for

        print(f"{parser.prog} {importlib.metadata.version('calls-server')}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calls-server",
        description="Self-hosted Calls API server. Settings also come from CALLS_* "
        "environment variables; flags win.",
    )
    parser.add_argument(
        "--version", action=_PrintVersion, nargs=0, help="print the version and exit"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (CALLS_DATA_DIR, default ./calls-data)"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("serve", help="run the HTTP server")
    run.add_argument("--host", help="address to listen on (CALLS_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (CALLS_PORT, default 8080)")
    run.add_argument("--log-level", help="critical|error|warning|info|debug (CALLS_LOG_LEVEL)")
    run.add_argument(
        "--workers",
        type=int,
        help="server processes on the port (CALLS_WORKERS, default 1; above 1 on PostgreSQL)",
    )
    run.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker's socket
    run.add_argument(
        "--create-org",
        metavar="ID",
        help="first run: create this organization with a key pair and print them once",
    )
    run.set_defaults(command=serve)

    org = commands.add_parser("create-org", help="create an organization and its first key pair")
    org.add_argument("--id", help="organization id (default: generated org_<hex>)")
    org.add_argument("--name", help="display name")
    org.add_argument("--key-name", help="a name for the first key")
    org.set_defaults(command=create_org)

    key = commands.add_parser("create-key", help="create a key pair for an organization")
    key.add_argument("organization_id")
    key.add_argument("--name", help="a name for the key")
    key.set_defaults(command=create_key)

    listing = commands.add_parser("list-keys", help="list an organization's keys (no secrets)")
    listing.add_argument("organization_id")
    listing.set_defaults(command=list_keys)

    revoke = commands.add_parser("revoke-key", help="revoke a key; it stops working at once")
    revoke.add_argument("organization_id")
    revoke.add_argument("api_key_id")
    revoke.set_defaults(command=revoke_key)

    agents = commands.add_parser(
        "mcp",
        help="serve the Calls operations to MCP clients (agents) as tools",
        description="An MCP server whose tools are the operations of openapi.yaml an "
        "organization may call (calls, schedules, agents, phone numbers, webhooks, batch "
        "calls; with --read-only only those that read), calling a running Calls server with "
        "one organization's key pair (CALLS_MCP_API_KEY, CALLS_MCP_API_SECRET). Needs the "
        "`mcp` extra. Over HTTP its clients must send `Authorization: Bearer "
        "$CALLS_MCP_TOKEN`, and only the Host names in CALLS_MCP_ALLOWED_HOSTS (default: "
        "loopback) and browser origins in CALLS_MCP_ALLOWED_ORIGINS (default: none) are "
        "answered.",
    )
    agents.add_argument(
        "--url",
        help="the Calls server's API base URL (CALLS_MCP_URL, default http://127.0.0.1:8080/api)",
    )
    agents.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    agents.add_argument(
        "--host",
        dest="mcp_host",
        help="with --transport http: address to listen on (CALLS_MCP_HOST, default 127.0.0.1)",
    )
    agents.add_argument(
        "--port",
        dest="mcp_port",
        type=int,
        help="with --transport http: port (CALLS_MCP_PORT, default 8090)",
    )
    agents.add_argument(
        "--read-only",
        action="store_const",
        const=True,
        help="only the operations that read (GET) are tools (CALLS_MCP_READ_ONLY)",
    )
    agents.set_defaults(command=mcp)

    sandbox = commands.add_parser(
        "sandbox",
        help="export, load or reset an organization's records on a running sandbox server",
        description="Calls a running server with the sandbox on (CALLS_SANDBOX) as one "
        "organization, by its key pair: the API's base URL from --url or CALLS_MCP_URL "
        "(default http://127.0.0.1:8080/api), the pair from --api-key and --api-secret or "
        "CALLS_MCP_API_KEY and CALLS_MCP_API_SECRET (the client settings `calls-server mcp` "
        "uses). Exits 1 with the API's error when it refuses.",
    )
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="the server's API base URL (CALLS_MCP_URL)")
    client.add_argument("--api-key", help="the organization's API key (CALLS_MCP_API_KEY)")
    client.add_argument("--api-secret", help="that key's secret (CALLS_MCP_API_SECRET)")
    state = sandbox.add_subparsers(required=True, metavar="ACTION")
    export = state.add_parser(
        "export", parents=[client], help="write the organization's records as a fixture"
    )
    export.add_argument(
        "--out", default="-", metavar="FILE", help="the fixture file (default: stdout)"
    )
    export.set_defaults(command=sandbox_export)
    load = state.add_parser(
        "load",
        parents=[client],
        help="add a fixture's records to the organization, ids kept, all or nothing",
    )
    load.add_argument("file", metavar="FILE", help="a fixture, as `sandbox export` writes it")
    load.set_defaults(command=sandbox_load)
    reset = state.add_parser(
        "reset",
        parents=[client],
        help="remove every record of the organization (it and its keys stay)",
    )
    reset.set_defaults(command=sandbox_reset)

    salvage_ = commands.add_parser(
        "recover",
        help="copy everything readable of a damaged data directory into a new one",
        description="Reads the data directory (--data-dir) as far as it can: the snapshot if "
        "it is intact, then every intact journal record in order, skipping damaged ones; "
        "writes the result as a new data directory and prints what could not be read.",
    )
    salvage_.add_argument("--to", type=Path, required=True, help="the new data directory")
    salvage_.set_defaults(command=recover)

    moving = commands.add_parser(
        "copy-to-postgres",
        help="copy the data directory into a PostgreSQL database (moving up)",
        description="Copies every record of the data directory (--data-dir: organizations, "
        "keys, agents, phone numbers, webhooks, calls with their events, webhook deliveries "
        "pending or done, idempotency keys) into the database in one transaction, and "
        "verifies the counts. The server must be stopped (the directory's lock). A database "
        "that holds records is refused unless --replace is given.",
    )
    moving.add_argument(
        "--database-url", help="the target database (CALLS_DATABASE_URL, postgresql://...)"
    )
    moving.add_argument(
        "--replace", action="store_true", help="remove what the database holds first"
    )
    moving.set_defaults(command=copy_to_postgres)

    reference = commands.add_parser(
        "settings",
        help="print every setting: its variable, default and meaning",
        description="Prints the configuration reference, docs/configuration.md, from the "
        "settings' own descriptions (calls_server/settings.py): the CALLS_* environment "
        "variables, their defaults and what they mean.",
    )
    reference.add_argument(
        "--markdown", action="store_true", required=True, help="as the Markdown page"
    )
    reference.set_defaults(command=settings_reference)
    return parser


if __name__ == "__main__":
    sys.exit(main())
