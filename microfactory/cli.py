"""The `microfactory` command: serve, db, user and token."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from microfactory.config import ConfigError, Settings, load_settings

log = logging.getLogger("microfactory.cli")
T = TypeVar("T")


def _require_database(settings: Settings) -> None:
    """Exit with one line saying what to run when the database is missing or not migrated."""
    from microfactory import migrate

    problem = migrate.problem(settings)
    if problem is not None:
        raise SystemExit(f"error: {problem}")


def _run_db(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
    """Run a coroutine with a session that commits on success (callers check the database)."""
    from microfactory.db import make_engine, make_sessionmaker

    async def runner() -> T:
        engine = make_engine(settings.async_database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(runner())


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, optionally seed the demo shop, then serve.

    One process by default. `--workers N` (PostgreSQL) runs N web workers and one machine
    host process; `--no-machines` runs web workers only, for a shop whose machines hang off
    another computer running `microfactory machines`.
    """
    import uvicorn

    from microfactory import migrate
    from microfactory.app import create_app

    if (args.workers > 1 or args.no_machines) and not settings.is_postgresql:
        what = f"--workers {args.workers}" if args.workers > 1 else "--no-machines"
        raise SystemExit(
            f"error: {what} needs PostgreSQL: web workers reach the machine host through "
            "PostgreSQL's LISTEN/NOTIFY, and SQLite allows one writer at a time; set "
            "MICROFACTORY_DATABASE_URL=postgresql+psycopg://… or serve with one worker"
        )
    migrate.upgrade(settings)
    if args.demo:
        from microfactory import demo

        logins = _run_db(settings, lambda s: demo.seed(session=s, settings=settings))
        demo.print_logins(logins, host=args.host, port=args.port)
    if args.workers == 1 and not args.no_machines:
        app = create_app(settings)
        uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
        return 0
    host = None
    if not args.no_machines:
        # Exactly one machine host: the supervisors, the queue and the scheduler.
        host = subprocess.Popen([sys.executable, "-m", "microfactory.cli", "machines"])
    # The workers read their settings from the environment, like this process did.
    os.environ["MICROFACTORY_RUN_SUPERVISORS"] = "false"
    try:
        uvicorn.run(
            "microfactory.app:create_app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=False,
        )
    finally:
        if host is not None:
            host.terminate()
            try:
                host.wait(timeout=30)
            except subprocess.TimeoutExpired:
                host.kill()
    return 0


def cmd_machines(settings: Settings, _args: argparse.Namespace) -> int:
    """Run the machine host alone: supervisors, the queue and the scheduler, no HTTP."""
    from microfactory import migrate
    from microfactory.app import create_app

    migrate.upgrade(settings)
    app = create_app(settings.model_copy(update={"run_supervisors": True}))

    async def host() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with app.router.lifespan_context(app):
            log.info("machine host running (pid %s)", os.getpid())
            await stop.wait()
        log.info("machine host stopped")

    asyncio.run(host())
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    """Upgrade or downgrade the database schema."""
    from microfactory import migrate

    if args.db_command == "upgrade":
        migrate.upgrade(settings, args.revision)
    else:
        problem = migrate.problem(settings)
        if problem is not None and "no database" in problem:
            raise SystemExit(f"error: {problem}")
        migrate.downgrade(settings, args.revision)
    print(f"database {args.db_command}d to {args.revision}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise SystemExit("error: the passwords do not match")
    if len(password) < 8:
        raise SystemExit("error: the password must have at least 8 characters")
    return password


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    """Create a user."""
    from pydantic import ValidationError

    from microfactory.accounts import service
    from microfactory.accounts.schemas import UserCreate
    from microfactory.errors import DomainError

    _require_database(settings)  # before asking for a password that could not be stored
    password = _read_password(args)
    try:
        user_in = UserCreate(
            username=args.username, password=password, role=args.role, full_name=args.full_name
        )
    except ValidationError as exc:
        raise SystemExit(f"error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    try:
        user = _run_db(settings, lambda s: service.create(session=s, user_in=user_in))
    except DomainError as exc:
        raise SystemExit(f"error: {exc.detail}") from None
    print(f"created {user.role.value} {user.username!r} (id {user.id})")
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Create a personal API token and print it."""
    import datetime as dt

    _require_database(settings)

    from sqlalchemy.ext.asyncio import AsyncSession

    from microfactory.accounts import service
    from microfactory.accounts.models import TokenKind
    from microfactory.errors import NotFoundError

    async def create(session: AsyncSession) -> str:
        user = await service.get_by_username(session=session, username=args.username)
        if user is None:
            raise NotFoundError(f"no user named {args.username!r}")
        ttl = dt.timedelta(days=args.expires_in_days) if args.expires_in_days else None
        value, _ = await service.issue_token(
            session=session, user=user, kind=TokenKind.PERSONAL, name=args.name, ttl=ttl
        )
        return value

    try:
        token = _run_db(settings, create)
    except NotFoundError as exc:
        raise SystemExit(f"error: {exc.detail}") from None
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog="microfactory", description="Operations server for makerspaces and microfactories."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate the database, then serve")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--demo", action="store_true", help="seed a demo shop with simulated machines and users"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="web worker processes (PostgreSQL only); one machine host runs beside them",
    )
    serve.add_argument(
        "--no-machines",
        action="store_true",
        help="web workers only; the machines are driven by `microfactory machines` elsewhere",
    )
    serve.set_defaults(func=cmd_serve)

    machines = sub.add_parser(
        "machines", help="run the machine host only (supervisors, queue, scheduler; no HTTP)"
    )
    machines.set_defaults(func=cmd_machines)

    db = sub.add_parser("db", help="database migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="migrate up (to the newest revision by default)")
    up.add_argument("revision", nargs="?", default="heads")
    down = dbsub.add_parser("downgrade", help="migrate down to a revision ('base' for empty)")
    down.add_argument("revision")
    db.set_defaults(func=cmd_db)

    user = sub.add_parser("user", help="manage users")
    usub = user.add_subparsers(dest="user_command", required=True)
    ucreate = usub.add_parser("create", help="create a user")
    ucreate.add_argument("--username", required=True)
    ucreate.add_argument("--role", choices=["member", "operator", "admin"], default="member")
    ucreate.add_argument("--full-name", default="")
    ucreate.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user.set_defaults(func=cmd_user)

    token = sub.add_parser("token", help="personal API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tcreate = tsub.add_parser("create", help="create a token and print it")
    tcreate.add_argument("--username", required=True)
    tcreate.add_argument("--name", default="cli")
    tcreate.add_argument("--expires-in-days", type=int, default=None)
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from microfactory.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    if args.command == "serve":
        args.host = args.host or settings.host
        args.port = args.port or settings.port
        # The address served is the shop's default public URL (network/service.py).
        settings = settings.model_copy(update={"host": args.host, "port": args.port})
        if args.workers < 1:
            print("error: --workers must be at least 1", file=sys.stderr)
            return 2
    from sqlalchemy.exc import SQLAlchemyError

    try:
        result: int = args.func(settings, args)
    except SQLAlchemyError as exc:
        # One line that says what is wrong, not a traceback: usually an unreachable server.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"error: database error: {reason}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
