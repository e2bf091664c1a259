"""The ``aion`` command: look at and steer the workflows in a data directory.

Reads go straight to the store (as a client: no lock, so they work while an engine runs).
Starts, signals, cancellations, decisions on approvals, waitpoint completions and unblocks go
through an :class:`aion.Client`: checked as the engine checks them, left in the store's inbox,
and applied promptly by a running engine (the client rings its doorbell), or by the next engine
to start.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from aion import _validate
from aion._apikeys import ROLES, ApiKeys
from aion._client import Client, Queued
from aion._codec import MAX_PAYLOAD_DEPTH, encode_payload
from aion._demo import run_demo
from aion._engine import Reader, WaitpointInfo, WorkflowDescription
from aion._format import describe_text, history_table, jsonable, table, waiting, when
from aion._recovery import RecoveryReport, sweep
from aion._replay import WorkflowDefinition, definition_of
from aion._tokens import rotate_file
from aion.errors import (
    AionError,
    DependencyMissing,
    InvalidArgument,
    NondeterminismError,
    PayloadError,
)
from aion.store import EventStore, LmdbStore, Status, collect_pages
from aion.store._postgres_import import is_postgres_url, postgres_store
from aion.testing import replay

__all__ = ["main"]

DEFAULT_DATA = "./aion-data"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aion`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        _check_ids(args)
        return int(args.run(args) or 0)
    except AionError as exc:
        print(f"aion: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aion", description="aion: an embedded durable-workflow engine."
    )
    sub = parser.add_subparsers(dest="command")

    def command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--data",
            default=DEFAULT_DATA,
            help=f"data directory or postgresql:// URL ({DEFAULT_DATA})",
        )
        p.set_defaults(run=run)
        return p

    p = command("demo", "run the showcase: a workflow that survives a SIGKILL", _demo)
    p.add_argument("--fresh", action="store_true", help="delete the demo's earlier run first")

    p = command("list", "list workflows, newest first", _list)
    _common(p)
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--type", dest="workflow_type")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")

    for name, run, text in (
        ("describe", _describe, "show one workflow (with its last step failure's traceback)"),
        ("history", _history, "show a workflow's recorded events"),
    ):
        p = command(name, text, run)
        p.add_argument("workflow_id")
        _common(p)
    p.add_argument(  # p is history's parser, the loop's last
        "--no-tracebacks",
        dest="tracebacks",
        action="store_false",
        help="leave out the tracebacks printed under step.failed and workflow.failed rows",
    )

    p = command("start", "start a workflow (applied by the running or next engine)", _start)
    p.add_argument("workflow_type", help="the registered name of the workflow type")
    p.add_argument(
        "args", nargs="?", default="[]", help="the arguments, as a JSON list (default: [])"
    )
    p.add_argument("--id", dest="workflow_id", help="the workflow id (default: a new one)")
    p.add_argument("--tenant", default="default")
    p.add_argument("--json", action="store_true", help="print JSON instead of the id")

    p = command("signal", "send a signal (applied by the running or next engine)", _signal)
    p.add_argument("workflow_id")
    p.add_argument("name")
    p.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null)")
    p.add_argument("--tenant", default="default")

    p = command("cancel", "cancel a workflow (applied by the running or next engine)", _cancel)
    p.add_argument("workflow_id")
    p.add_argument("--reason")
    p.add_argument("--tenant", default="default")

    p = command("unblock", "retry a BLOCKED run now (applied by the running engine)", _unblock)
    p.add_argument("workflow_id")
    p.add_argument("--tenant", default="default")

    p = command("approvals", "list approvals waiting for a person, oldest first", _approvals)
    _common(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")

    for name, run, text in (
        ("approve", _approve, "approve a pending approval (applied by the running engine)"),
        ("reject", _reject, "reject a pending approval (applied by the running engine)"),
    ):
        p = command(name, text, run)
        p.add_argument("workflow_id")
        p.add_argument("--user", required=True, help="who decides")
        p.add_argument("--comment", required=name == "reject")
        p.add_argument("--approval-id", help="which approval, when several are pending")
        p.add_argument(
            "--digest",
            help="decide only if the approval is for exactly this (its digest in "
            "`aion approvals`): what you decide is what you saw",
        )
        p.add_argument("--tenant", default="default")

    p = command("waitpoints", "list a workflow's pending waitpoints (fingerprints)", _waitpoints)
    p.add_argument("workflow_id")
    _common(p)

    p = command("complete", "complete a waitpoint with its token", _complete)
    p.add_argument("token")
    p.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null)")

    keys = sub.add_parser("keys", help="manage the waitpoint signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser(
        "rotate",
        help="make a new current key; the old one keeps verifying tokens for the grace period",
    )
    p.add_argument("--data", default=DEFAULT_DATA, help=f"data directory ({DEFAULT_DATA})")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds the retired key keeps working (default: the ring's, 7 days)",
    )
    p.set_defaults(run=_rotate_keys, command="keys")

    p = command("serve", "run an engine with a module's workflows and serve its HTTP API", _serve)
    p.add_argument("--app", required=True, help="module that defines the workflows")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    p.add_argument(
        "--api-keys",
        dest="api_keys",
        metavar="FILE",
        help="the API key file (default: api-keys.json in the data directory; needed with a "
        "postgresql:// URL)",
    )

    api_key = sub.add_parser("api-key", help="manage the API keys of the HTTP API")
    api_key_sub = api_key.add_subparsers(dest="api_key_command", required=True)

    def api_key_command(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        p = api_key_sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--data",
            default=DEFAULT_DATA,
            help=f"data directory; its api-keys.json holds the keys ({DEFAULT_DATA})",
        )
        p.add_argument(
            "--api-keys",
            dest="api_keys",
            metavar="FILE",
            help="the key file to use instead of the data directory's (needed with a "
            "postgresql:// URL)",
        )
        p.set_defaults(run=run, command="api-key")
        return p

    # The role and tenant rules are ApiKeys.create's (one check for Python and the CLI).
    p = api_key_command("create", "make a new API key; it is shown once", _create_api_key)
    p.add_argument("--role", required=True, metavar="|".join(ROLES), help="what the key may do")
    p.add_argument("--tenant", default=None, help="the one tenant the key is for")
    p.add_argument("--all-tenants", action="store_true", help="a key for every tenant")
    p.add_argument("--label", default=None, help="what the key is for (default: its id)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = api_key_command("list", "list the API keys (never the keys themselves)", _list_api_keys)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = api_key_command("revoke", "revoke an API key (from its next request on)", _revoke_api_key)
    p.add_argument("key_id", help="the key's id (`aion api-key list` shows them)")

    p = command("recover", "run the startup recovery sweep (a dry run unless --apply)", _recover)
    p.add_argument("--apply", action="store_true", help="repair (takes the engine lock)")
    p.add_argument("--json", action="store_true")

    p = command("replay", "replay every stored history against the current code", _replay)
    p.add_argument("--app", required=True, help="module that defines the workflows")
    p.add_argument("--tenant", default=None, help="only this tenant (default: all)")
    p.add_argument("--json", action="store_true")
    return parser


def _check_ids(args: argparse.Namespace) -> None:
    """The checks the engine's methods make on ids, before anything is read or queued (an
    argument the shell could not decode holds lone surrogates, say)."""
    for attr, what in (("workflow_id", "workflow id"), ("tenant", "tenant")):
        value = getattr(args, attr, None)
        if value is not None:
            _validate.identifier(value, what)
    if getattr(args, "limit", None) is not None:
        _validate.page_limit(args.limit)
    _validate.cursor(getattr(args, "cursor", None))


def _json_value(text: str, what: str = "the payload") -> Any:
    """A value given as JSON on the command line (the client encodes it as the engine does,
    and checks it against the limit the engine on the data directory recorded)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PayloadError(
            f"{what} is nested more than {MAX_PAYLOAD_DEPTH} levels deep; flatten it"
        ) from None
    except ValueError as exc:  # JSONDecodeError, or an integer of too many digits
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from exc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", default="default")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


# --- reading --------------------------------------------------------------------------------------


def _open(args: argparse.Namespace, role: Literal["engine", "client"] = "client") -> EventStore:
    """The store ``--data`` names: a data directory, or a PostgreSQL URL."""
    if is_postgres_url(args.data):
        store: EventStore = postgres_store()(args.data, role=role)
        return store
    return LmdbStore(Path(args.data), role=role)


def _target(args: argparse.Namespace) -> str | Path:
    """What a Client opens for ``--data``: the URL as it is, or the directory."""
    return args.data if is_postgres_url(args.data) else Path(args.data)


def _read(args: argparse.Namespace, fn: Any) -> Any:
    async def go() -> Any:
        store = _open(args)
        try:
            return await fn(Reader(lambda: store), store)
        finally:
            await store.aclose()

    return anyio.run(go)


def _list(args: argparse.Namespace) -> int:
    status = Status(args.status) if args.status else None
    page = _read(
        args,
        lambda reader, _: reader.list(
            status=status,
            workflow_type=args.workflow_type,
            tenant=args.tenant,
            limit=args.limit,
            cursor=args.cursor,
        ),
    )
    if args.json:
        print_json({"items": page.items, "next_cursor": page.next_cursor})
        return 0
    rows = [
        (
            d.workflow_id,
            d.workflow_type,
            d.status.value,
            when(d.created_at),
            when(d.closed_at),
            waiting(d),
        )
        for d in page.items
    ]
    print(table(("WORKFLOW", "TYPE", "STATUS", "STARTED", "CLOSED", "WAITING ON"), rows))
    if page.next_cursor:
        print("\n" + _more(args, "list", page.next_cursor))
    return 0


#: Options a "more:" hint repeats (flag, attribute, default), so the next page is of the
#: same query. A cursor is bound to its query: one without them would be refused.
_PAGE_OPTIONS = (
    ("--data", "data", DEFAULT_DATA),
    ("--tenant", "tenant", "default"),
    ("--status", "status", None),
    ("--type", "workflow_type", None),
    ("--limit", "limit", 50),
)


def _more(args: argparse.Namespace, command: str, cursor: str) -> str:
    """The command for the next page, quoted for a POSIX shell: it works when pasted."""
    argv = ["aion", command]
    for flag, name, default in _PAGE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value != default:
            argv += [flag, str(value)]
    return "more: " + shlex.join([*argv, "--cursor", cursor])


def _describe(args: argparse.Namespace) -> int:
    desc = _read(args, lambda reader, _: reader.describe(args.workflow_id, tenant=args.tenant))
    if args.json:
        print_json(desc)
        return 0
    print(describe_text(desc))
    return 0


def _history(args: argparse.Namespace) -> int:
    events = _read(args, lambda reader, _: reader.history(args.workflow_id, tenant=args.tenant))
    if args.json:
        print_json(
            [{k: v for k, v in msgspec.structs.asdict(e).items() if k != "raw"} for e in events]
        )
        return 0
    print(history_table(events, tracebacks=args.tracebacks))
    return 0


# --- steering -------------------------------------------------------------------------------------


def _send(args: argparse.Namespace, fn: Any, tenant: str = "default") -> Any:
    """Run ``fn(client)`` with a :class:`Client` on the data directory."""

    async def go() -> Any:
        async with Client(_target(args), tenant=tenant) as client:
            return await fn(client)

    return anyio.run(go)


def _report(kind: str, workflow_id: str, queued: Queued) -> int:
    record = queued.record
    if record is not None and record.status is Status.BLOCKED:
        print(
            f"queued {kind} for {workflow_id} (command {queued.command_id}); the run is "
            f"BLOCKED ({record.reason}): it is kept and applied, in arrival order, once the run "
            f"runs again (after a fix: aion unblock {workflow_id})"
        )
        return 0
    print(
        f"queued {kind} for {workflow_id} (command {queued.command_id}); a running engine "
        "applies it promptly, otherwise the next engine to start does"
    )
    return 0


# Each command checks what it can before it opens the store (the client checks again, and
# against the limit the engine on the data directory recorded).


def _start(args: argparse.Namespace) -> int:
    name = _validate.identifier(args.workflow_type, "workflow type")
    values = _json_value(args.args, "the arguments")
    if not isinstance(values, list):
        raise InvalidArgument(
            f"the arguments are a JSON list (e.g. '[\"o-1\", 50]'), not {type(values).__name__}"
        )
    encode_payload(values, what=f"input of workflow {name!r}")
    queued, handle = _send(
        args,
        lambda client: client._start(args.workflow_type, tuple(values), args.workflow_id, None),
        args.tenant,
    )
    if args.json:
        print_json(
            {
                "workflow_id": handle.workflow_id,
                "tenant": handle.tenant,
                "queued": queued is not None,
                "command_id": queued.command_id if queued is not None else None,
            }
        )
        return 0
    print(handle.workflow_id)
    if queued is None:
        print(
            f"workflow {handle.workflow_id} exists already (a {args.workflow_type} run): "
            "nothing was queued",
            file=sys.stderr,
        )
    return 0


def _signal(args: argparse.Namespace) -> int:
    name = _validate.name(args.name, "signal name")
    payload = _json_value(args.payload)
    encode_payload(payload, what=f"signal {name!r}")
    queued = _send(
        args,
        lambda client: client._signal(args.workflow_id, args.name, payload, tenant=None),
        args.tenant,
    )
    return _report("signal", args.workflow_id, queued)


def _cancel(args: argparse.Namespace) -> int:
    _validate.optional_text(args.reason, "cancel reason")
    queued = _send(
        args,
        lambda client: client._cancel(args.workflow_id, reason=args.reason, tenant=None),
        args.tenant,
    )
    return _report("cancel", args.workflow_id, queued)


#: How long ``aion unblock`` waits for a running engine to retry the run.
_UNBLOCK_WAIT = 10.0


def _unblock(args: argparse.Namespace) -> int:
    queued, taken, desc = _send(
        args,
        lambda client: client._unblock(args.workflow_id, tenant=None, timeout=_UNBLOCK_WAIT),
        args.tenant,
    )
    print(f"queued unblock for {args.workflow_id} (command {queued.command_id})")
    print(_unblocked(desc, taken))
    return 0


def _unblocked(desc: WorkflowDescription, taken: bool) -> str:
    if not taken:
        return "no running engine took it yet: the next engine to start retries the run"
    if desc.status is Status.BLOCKED:
        return f"the engine retried it; it is BLOCKED still ({desc.reason})"
    return f"the engine retried it; it is {desc.status.value} now"


# --- people and outside systems ------------------------------------------------------------------


#: Approval details longer than this are cut in the ``aion approvals`` table (not in --json).
_DETAILS_WIDTH = 80


def _approvals(args: argparse.Namespace) -> int:
    page = _read(
        args,
        lambda reader, _: reader.pending_approvals(
            tenant=args.tenant, limit=args.limit, cursor=args.cursor
        ),
    )
    if args.json:
        print_json({"items": page.items, "next_cursor": page.next_cursor})
        return 0
    rows = []
    cut = False
    for a in page.items:
        details = "-" if a.details is None else json.dumps(jsonable(a.details))
        if len(details) > _DETAILS_WIDTH:
            details, cut = details[: _DETAILS_WIDTH - 3] + "...", True
        # The whole digest: it is what `aion approve --digest` takes.
        row = (a.workflow_id, a.approval_id, a.action, when(a.requested_at), when(a.timeout_at))
        rows.append((*row, a.digest, details))
    header = ("WORKFLOW", "APPROVAL", "ACTION", "REQUESTED", "TIMES OUT", "DIGEST", "DETAILS")
    print(table(header, rows))
    if cut:
        print(f"\ndetails longer than {_DETAILS_WIDTH} characters are cut; --json shows them whole")
    if page.next_cursor:
        print("\n" + _more(args, "approvals", page.next_cursor))
    return 0


def _decide(args: argparse.Namespace, kind: str) -> int:
    _validate.user(args.user)
    _validate.optional_text(args.comment, "comment")
    if args.comment is not None and kind == "reject" and not args.comment.strip():
        raise InvalidArgument("a rejection says why: --comment '...' (not empty)")
    _validate.optional_identifier(args.approval_id, "approval_id")
    _validate.optional_text(args.digest, "digest", limit=_validate.MAX_NAME_BYTES)
    queued = _send(
        args,
        lambda client: client._decide(
            kind,
            args.workflow_id,
            args.user,
            args.comment,
            args.approval_id,
            args.digest,
            None,
            pick="pick one with --approval-id",
        ),
        args.tenant,
    )
    return _report(kind, args.workflow_id, queued)


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def _reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")


def _waitpoints(args: argparse.Namespace) -> int:
    async def go(reader: Reader, _: LmdbStore) -> list[WaitpointInfo]:
        return await collect_pages(
            lambda cursor: reader.pending_waitpoints(
                args.workflow_id, tenant=args.tenant, limit=100, cursor=cursor
            )
        )

    rows = _read(args, go)
    if args.json:
        print_json(rows)
        return 0
    header = (
        "WAITPOINT", "NAME", "CREATED", "EXPIRES", "TOKEN FINGERPRINT", "KEY", "LAST BAD TOKEN",
    )  # fmt: skip
    print(
        table(
            header,
            [
                (
                    w.waitpoint_id,
                    w.name,
                    when(w.created_at),
                    when(w.expires_at),
                    w.fingerprint,
                    w.token_kid or "-",
                    when(w.last_failed_validation_at),
                )
                for w in rows
            ],
        )
    )
    return 0


def _complete(args: argparse.Namespace) -> int:
    payload = _json_value(args.payload)
    encode_payload(payload, what="the completion")
    queued = _send(args, lambda client: client._complete_waitpoint(args.token, payload))
    assert queued.record is not None
    return _report("complete_waitpoint", queued.record.workflow_id, queued)


def _rotate_keys(args: argparse.Namespace) -> int:
    grace = None
    if args.grace is not None:
        grace = timedelta(seconds=_validate.seconds(args.grace, "--grace"))
    key = rotate_file(Path(args.data), now=datetime.now(UTC), grace=grace)
    print(
        f"new current waitpoint key {key.kid}; tokens signed with the previous key keep working "
        "for the grace period. Restart running engines to sign with the new key."
    )
    return 0


# --- API keys ---


def _api_keys(args: argparse.Namespace) -> ApiKeys:
    return ApiKeys.for_target(args.data, args.api_keys)


def _create_api_key(args: argparse.Namespace) -> int:
    key, described = _api_keys(args).create(
        role=args.role, tenant=args.tenant, all_tenants=args.all_tenants, label=args.label
    )
    if args.json:
        fields = ("key_id", "role", "tenant", "label")
        print_json({"key": key, **{f: getattr(described, f) for f in fields}})
        return 0
    tenant = "all tenants" if described.tenant is None else f"tenant {described.tenant}"
    print(
        f"created API key {described.key_id} (role {described.role}, {tenant}, "
        f"label {described.label!r}):"
    )
    print(key)
    print("Store it now: it will not be shown again (aion keeps only its SHA-256 hash).")
    return 0


def _list_api_keys(args: argparse.Namespace) -> int:
    keys = _api_keys(args).list()
    if args.json:
        print_json(keys)
        return 0
    rows = [
        (k.key_id, k.role, k.tenant or "*", k.label, when(k.created_at), when(k.revoked_at))
        for k in keys
    ]
    print(table(("ID", "ROLE", "TENANT", "LABEL", "CREATED", "REVOKED"), rows))
    return 0


def _revoke_api_key(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    key = _api_keys(args).revoke(args.key_id, now=now)
    if key.revoked_at != now:
        print(f"API key {key.key_id} was revoked already, at {when(key.revoked_at)}")
        return 0
    print(
        f"revoked API key {key.key_id} ({key.role}, label {key.label!r}); an HTTP server "
        "refuses it from its next request on"
    )
    return 0


# --- recover ---


def _recover(args: argparse.Namespace) -> int:
    async def go() -> RecoveryReport:
        role: Literal["engine", "client"] = "engine" if args.apply else "client"
        store = _open(args, role)
        try:
            return await sweep(store, now=datetime.now(UTC), apply=args.apply, full=True)
        finally:
            await store.aclose()

    report = anyio.run(go)
    if args.json:
        print_json(report)
        return 0
    print(report.summary())
    for repair in report.repairs:
        print(f"  {repair.kind}: {repair.tenant}/{repair.workflow_id}: {repair.detail}")
    if report.repairs and not report.applied:
        print("run again with --apply to repair (stop the engine first), or just start the engine")
    return 0


# --- replay ---------------------------------------------------------------------------------------


def _app_workflows(app: str) -> dict[str, WorkflowDefinition]:
    """The workflows the module ``--app`` defines, by type name."""
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(app)
    except Exception as exc:  # not found, or its own import failed: either way, say which
        raise InvalidArgument(
            f"--app {app!r} cannot be imported ({type(exc).__name__}: {exc}); pass the "
            "dotted name of the module that defines the workflows, importable from the "
            "current directory or PYTHONPATH"
        ) from exc
    definitions: dict[str, WorkflowDefinition] = {}
    for value in vars(module).values():
        try:
            d = definition_of(value)
        except (InvalidArgument, TypeError):
            continue
        definitions[d.name] = d
    if not definitions:
        raise InvalidArgument(f"module {app!r} defines no @aion.workflow functions")
    return definitions


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InvalidArgument(f"--port must be 0 to 65535, not {args.port}")
    definitions = _app_workflows(args.app)
    try:
        from aion.server._serve import serve  # noqa: PLC0415 (the extra aion[server])
    except ImportError as exc:
        raise DependencyMissing(
            f"aion serve needs Starlette and uvicorn ({exc}); install them with: "
            'pip install "aion[server]"'
        ) from exc

    def ready(url: str) -> None:
        print(f"aion: serving {len(definitions)} workflow types on {url}", flush=True)

    anyio.run(
        partial(
            serve,
            _target(args),
            [d.fn for d in definitions.values()],
            host=args.host,
            port=args.port,
            api_keys=args.api_keys,
            on_ready=ready,
        )
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    definitions = _app_workflows(args.app)

    async def go() -> list[dict[str, Any]]:
        store = _open(args)
        reader = Reader(lambda: store)
        report: list[dict[str, Any]] = []
        try:
            tenants = await store.tenants() if args.tenant is None else [args.tenant]
            for tenant in tenants:
                cursor = None
                while True:
                    page = await store.list_workflows(tenant=tenant, limit=500, cursor=cursor)
                    for record in page.items:
                        report.append(await _replay_one(reader, record, definitions, replay))
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        finally:
            await store.aclose()
        return report

    report = anyio.run(go)
    bad = [r for r in report if r["outcome"] != "ok"]
    if args.json:
        print_json({"replayed": len(report), "divergent": bad})
    else:
        for r in bad:
            print(f"{r['tenant']}/{r['workflow_id']}: {r['outcome']}: {r['message']}")
        print(f"replayed {len(report)} histories: {len(report) - len(bad)} ok, {len(bad)} not")
    return 1 if bad else 0


async def _replay_one(
    reader: Reader, record: Any, definitions: dict[str, WorkflowDefinition], replay: Any
) -> dict[str, Any]:
    row = {"tenant": record.tenant, "workflow_id": record.workflow_id, "message": ""}
    definition = definitions.get(record.workflow_type)
    if definition is None:
        return {
            **row,
            "outcome": "unknown-type",
            "message": f"no workflow named {record.workflow_type!r} in the app",
        }
    history = await reader.history(record.workflow_id, tenant=record.tenant)
    try:
        replay(definition, history, workflows=list(definitions.values()))
    except NondeterminismError as exc:
        return {**row, "outcome": "divergent", "message": str(exc)}
    return {**row, "outcome": "ok"}


# --- demo -----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    if is_postgres_url(args.data):
        raise InvalidArgument("the demo runs on a data directory: pass --data DIR, not a URL")
    return run_demo(Path(args.data), fresh=args.fresh)


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


if __name__ == "__main__":
    sys.exit(main())
