"""The `sandboxd` command: serve, run, and administer keys, sandboxes and organizations.

Each command parses its options, calls one service function and prints the result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import Admin, start
from .commands import plans as plans_commands
from .commands import audit as audit_commands
from .commands import members as members_commands
from .commands.common import DatabaseUrl, DataDir, OrgName, admin_call, fail, settings_of
from .errors import InvalidRequest, SandboxdError, SandboxSetupError
from .observability import configure_logging
from .observability.logging import get_logger
from .runtime import DEFAULT_LANGUAGE, DEFAULT_TIMEOUT_S, LANGUAGES, spoken
from .service import SandboxConfig, parse_execute_request
from .images import skopeo
from .service.admin import KeySpec, SandboxChanges, Secret, parse_storage_ref, parse_volume_ref
from .service.roles import AdminPrincipal, cli_principal
from .service.tenancy import DEFAULT_ORG, DEFAULT_SANDBOX
from .service.storage import ConnectionSpec

app = typer.Typer(help="sandboxd: run untrusted code for AI agents in isolated sandboxes.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (each bound to one organization and sandbox).", no_args_is_help=True)
sandboxes_app = typer.Typer(help="Sandbox configs: CPU, memory, network, timeout cap.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organizations.", no_args_is_help=True)
images_app = typer.Typer(
    help="Runtime images: the root filesystem a sandbox config runs on (OCI images; `host` is the host's /usr).",
    no_args_is_help=True,
)
webhooks_app = typer.Typer(help="Webhook signing secrets.", no_args_is_help=True)
threads_app = typer.Typer(help="Threads: persistent /home/baponi per thread_id.", no_args_is_help=True)
volumes_app = typer.Typer(help="Volumes: shared storage at /data/<name>/.", no_args_is_help=True)
storage_app = typer.Typer(
    help="Storage connections: an organization's S3, GCS or Azure buckets at /data/<name>/.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(threads_app, name="threads")
app.add_typer(volumes_app, name="volumes")
app.add_typer(storage_app, name="storage")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(sandboxes_app, name="sandboxes")
app.add_typer(orgs_app, name="orgs")
app.add_typer(images_app, name="images")
app.add_typer(plans_commands.app, name="plans")
app.command("usage")(plans_commands.usage)
app.add_typer(audit_commands.app, name="audit")
app.add_typer(members_commands.app, name="members")


@app.callback()
def _before_any_command() -> None:
    # What is imported by now lives as long as the process: out of the garbage collector's
    # sight, so its full collections, and the one at exit, no longer walk it all (a quarter
    # of the CPU time of a one-shot command like `keys list`, measured).
    gc.freeze()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default 8080]")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Start the API server (fails closed if sandboxes cannot be isolated on this host)."""
    from .server import serve as serve_http

    gc.freeze()  # the server's modules too (see _before_any_command)
    settings = settings_of(data_dir, database_url, host=host, port=port)
    configure_logging(settings.log_level, settings.log_format)

    async def go() -> None:
        try:
            services = await start(settings)
        except SandboxSetupError as exc:
            get_logger("sandboxd.server").error("refusing to serve", reason=exc.message)
            raise typer.Exit(1) from None
        owner_token = await services.members.bootstrap()
        if owner_token is not None:
            _hand_over_owner_token(owner_token, settings.data_dir)
        try:
            await serve_http(services)
        finally:
            await services.close()

    asyncio.run(go())


BOOTSTRAP_TOKEN_FILE = "owner.token"


def _hand_over_owner_token(token: str, data_dir: Path) -> None:
    """The first start's owner token: on the terminal when there is one; else (a service
    manager's journal would keep it) into a root-only file of the data dir, to read and delete."""
    if sys.stderr.isatty():
        typer.echo(
            f"\nsandboxd: first start. The owner's admin token (admin API, console sign-in), shown only "
            f"this once:\n\n    {token}\n\nMake more with `sandboxd members token owner`.\n",
            err=True,
        )
        return
    path = data_dir / BOOTSTRAP_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    get_logger("sandboxd.server").warning(
        "first start: the owner's admin token is in a root-only file; read it, then delete the file", path=str(path)
    )


@app.command()
def doctor(
    host: Annotated[str | None, typer.Option(help="Address serve will listen on [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port serve will listen on [default 8080]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Check this host for what sandboxd needs; print OK/WARN/FAIL and a fix for each problem.

    Exits 0 when nothing failed, 1 otherwise. Safe beside a running server: the port check
    then says a sandboxd server is running there, and the sandbox check uses a cgroup and
    host uids of its own.
    """
    from . import doctor as checks

    results = asyncio.run(checks.run_checks(settings_of(data_dir, host=host, port=port)))
    typer.echo(checks.render(results))
    raise typer.Exit(0 if checks.passed(results) else 1)


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (docs/configuration.md) from the settings model."""
    from .config_reference import render

    typer.echo(render(), nl=False)


@app.command()
def run(
    code: Annotated[str, typer.Argument(help="The code, or - to read it from standard input.")],
    language: Annotated[str, typer.Option("--language", "-l", help=spoken(LANGUAGES))] = DEFAULT_LANGUAGE,
    timeout: Annotated[int, typer.Option(help="Seconds (capped by the sandbox config).")] = DEFAULT_TIMEOUT_S,
    sandbox: Annotated[str, typer.Option(help="Sandbox config to use.")] = DEFAULT_SANDBOX,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON object instead of the output.")
    ] = False,
) -> None:
    """Run one execution locally, in the same sandbox the server uses; exits with its exit code."""
    source = sys.stdin.read() if code == "-" else code
    settings = settings_of(data_dir)
    # stderr is the program's here: only warnings and errors, unless debug was asked for
    configure_logging("debug" if settings.log_level == "debug" else "warning", settings.log_format)

    async def go() -> int:
        # Beside a live server on this data dir: a lease, cgroups and uids of its own (app.start)
        services = await start(settings, role="run")
        try:
            request = parse_execute_request({"code": source, "language": language, "timeout": timeout})
            the_org = await services.tenancy.org(org)
            principal = await services.keys.local_principal(the_org, await services.tenancy.sandbox(the_org, sandbox))
            outcome = await services.executions.execute(principal, request, delivery_mode="cli")
        finally:
            await services.close()
        if as_json:
            typer.echo(json.dumps(
                {"trace_id": outcome.trace_id, "status": outcome.status, **outcome.result(),
                 "output_truncated": outcome.output_truncated,
                 "network": [dataclasses.asdict(d) for d in outcome.network]}
            ))
            return outcome.exit_code
        sys.stdout.write(outcome.stdout)
        sys.stdout.flush()
        sys.stderr.write(outcome.stderr)
        if outcome.error:
            why = f"{outcome.error}: {outcome.error_message}" if outcome.error_message else outcome.error
            sys.stderr.write(f"sandboxd: {outcome.status} ({why}); trace {outcome.trace_id}\n")
        for note in outcome.notes:  # output truncated, a timeout lowered, ... (service/notes.py)
            sys.stderr.write(f"sandboxd: {note}\n")
        return outcome.exit_code

    try:
        rc = asyncio.run(go())
    except SandboxdError as exc:
        fail(exc.message, 2)
        return
    raise typer.Exit(rc)


# --- keys ---------------------------------------------------------------------------------


async def _principal(admin: Admin, org: str) -> AdminPrincipal:
    """The CLI acts as root on the server's host, in `org` (service/roles.py cli_principal)."""
    return cli_principal(await admin.tenancy.org(org))


def _expiry(text: str | None) -> datetime | None:
    """`--expires`: an ISO 8601 time (UTC when it names no zone) or a duration: 90m, 12h, 30d."""
    if text is None:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if len(text) > 1 and text[-1] in units and text[:-1].isdigit():
        return datetime.now(timezone.utc) + timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"--expires {text!r}: expected an ISO 8601 time or a duration like 30d, 12h, 90m") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    sandbox: Annotated[str, typer.Option(help="Sandbox config the key is bound to.")] = DEFAULT_SANDBOX,
    region: Annotated[str, typer.Option(help="Region code in the key (sk-<region>-...).")] = "local",
    volume: Annotated[
        list[str] | None, typer.Option("--volume", help="Bind a volume: NAME (read-write) or NAME:ro. Repeatable.")
    ] = None,
    storage: Annotated[
        list[str] | None,
        typer.Option(
            "--storage",
            help="Bind a storage connection: NAME[:ro][:prefix=PATH] (PATH below the connection's own "
            "prefix: the key sees only that). Repeatable.",
        ),
    ] = None,
    connector: Annotated[
        list[str] | None, typer.Option("--connector", help="Bind a connector: NAME. Repeatable.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Refuse the key from then on: an ISO 8601 time (2030-01-31T00:00Z) "
                     "or a duration (30d, 12h)."),
    ] = None,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key and print it. It is shown only this once."""

    async def go(admin: Admin) -> Secret:
        spec = KeySpec(
            name=name, sandbox=sandbox, region=region,
            volumes=tuple(parse_volume_ref(v) for v in volume or []),
            storage=tuple(parse_storage_ref(s) for s in storage or []),
            connectors=tuple(connector or []),
            expires_at=_expiry(expires),
        )
        return await admin.ops.create_key(await _principal(admin, org), spec)

    created = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(created.secret)
    typer.echo(
        f"key id {created.view['id']} (org {org}, sandbox {sandbox}); store it now: it is not shown again",
        err=True,
    )


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List keys (id, prefix, name, status); never the keys themselves."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        if org:
            return await admin.ops.list_keys(await _principal(admin, org))
        return await admin.ops.list_keys(await _principal(admin, DEFAULT_ORG), every_org=True)

    for key in admin_call(settings_of(data_dir, database_url), go):
        created = datetime.fromisoformat(key["created_at"])
        typer.echo(f"{key['id']}\t{key['prefix']}...\t{key['name']}\t{key['status']}\t{created:%Y-%m-%d %H:%M}")


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Revoke a key: it stops working at once."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.revoke_key(await _principal(admin, DEFAULT_ORG), key_id)

    key = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"revoked {key['id']}")


@keys_app.command("bind")
def keys_bind(
    key_id: str,
    volume: Annotated[str, typer.Argument(help="NAME (read-write), NAME:rw or NAME:ro.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Bind a key to a volume of its organization, or change the binding (at once, live too)."""
    slug, _, mode = volume.partition(":")
    if mode not in ("", "ro", "rw"):
        fail(f"{volume!r}: the mode after ':' must be ro or rw")

    async def go(admin: Admin) -> None:
        await admin.ops.bind_volume(await _principal(admin, DEFAULT_ORG), key_id, slug, read_only=mode == "ro")

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"bound {key_id} to {slug} {'read-only' if mode == 'ro' else 'read-write'}")


@keys_app.command("unbind")
def keys_unbind(
    key_id: str, volume: str, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Unbind a key from a volume: its next executions no longer mount it."""

    async def go(admin: Admin) -> None:
        await admin.ops.unbind_volume(await _principal(admin, DEFAULT_ORG), key_id, volume)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"unbound {key_id} from {volume}")


# --- sandboxes ----------------------------------------------------------------------------


ImageOption = Annotated[
    str, typer.Option("--image", help="Runtime image (`sandboxd images list`); host: the host's /usr.")
]


@sandboxes_app.command("create")
def sandboxes_create(
    name: str,
    cpus: Annotated[float, typer.Option(help="CPU quota in cores.")] = SandboxConfig.cpus,
    memory: Annotated[int, typer.Option("--memory", help="Memory limit in MiB.")] = SandboxConfig.memory_mib,
    network: Annotated[
        str, typer.Option(help="Network policy: none (default), allowlist (via --allow) or full.")
    ] = "none",
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="With --network allowlist: a domain the code may reach over HTTP(S): pypi.org, "
            "*.example.com (subdomains), host:port (other than 80/443). Repeatable.",
        ),
    ] = None,
    timeout_cap: Annotated[int, typer.Option("--timeout-cap", help="Longest timeout allowed, seconds.")] = SandboxConfig.timeout_cap_s,
    image: ImageOption = "host",
    session: Annotated[
        str,
        typer.Option(
            "--session",
            help="persistent: with a thread_id, the interpreter (variables, imports, cwd) is kept "
            "between the thread's executions; stateless (default): a fresh one each time.",
        ),
    ] = SandboxConfig.session,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a sandbox config."""
    config = SandboxConfig(
        name=name, cpus=cpus, memory_mib=memory, network=network, timeout_cap_s=timeout_cap,
        allow=tuple(allow or ()), session=session,
    )

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.create_sandbox(await _principal(admin, org), config, image=image)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@sandboxes_app.command("update")
def sandboxes_update(
    name: str,
    image: Annotated[
        str | None, typer.Option("--image", help="Runtime image (`sandboxd images list`); host: the host's /usr.")
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU quota in cores.")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory limit in MiB.")] = None,
    network: Annotated[str | None, typer.Option(help="Network policy: none, allowlist (via --allow) or full.")] = None,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="Replace the allowlist with these domains. Repeatable.")
    ] = None,
    timeout_cap: Annotated[int | None, typer.Option("--timeout-cap", help="Longest timeout allowed, seconds.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="persistent or stateless.")] = None,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Change a sandbox config (what is given): its keys' next executions use it (threads keep their homes)."""
    changes = SandboxChanges(
        cpus=cpus, memory_mib=memory, network=network, allow=tuple(allow) if allow is not None else None,
        timeout_cap_s=timeout_cap, image=image, session=session,
    )

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.update_sandbox(await _principal(admin, org), name, changes)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@sandboxes_app.command("list")
def sandboxes_list(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List sandbox configs, one JSON object a line."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        return await admin.ops.list_sandboxes(await _principal(admin, org))

    for view in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(json.dumps(view))


@sandboxes_app.command("show")
def sandboxes_show(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Show one sandbox config."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.show_sandbox(await _principal(admin, org), name)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@sandboxes_app.command("delete")
def sandboxes_delete(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Delete a sandbox config that no active key is bound to."""

    async def go(admin: Admin) -> None:
        await admin.ops.delete_sandbox(await _principal(admin, org), name)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {name}")


# --- images -------------------------------------------------------------------------------

ImageOrg = Annotated[
    str | None,
    typer.Option("--org", help="The organization that owns it; without: a built-in image every organization can use."),
]


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        raise  # unreachable


def _progress(line: str) -> None:
    typer.echo(line, err=True)


async def _image_scope(admin: Admin, org: str | None) -> tuple[AdminPrincipal, dict[str, Any]]:
    """The CLI's principal and the image operation's scope: an organization's, else built in."""
    return await _principal(admin, org or DEFAULT_ORG), {"builtin": org is None}


@images_app.command("import")
def images_import(
    path: Annotated[Path, typer.Argument(help="An OCI image layout directory, an oci-archive or a `docker save` tarball.")],
    name: Annotated[str, typer.Option("--name", help="The image's name.")],
    org: ImageOrg = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Import an image from a file or directory: verified, unpacked once, stored read-only."""

    async def go(admin: Admin) -> dict[str, Any]:
        p, scope = await _image_scope(admin, org)
        return await admin.ops.import_image(p, name, path, _progress, **scope)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@images_app.command("pull")
def images_pull(
    ref: Annotated[str, typer.Argument(help="registry/repository:tag or @sha256:digest")],
    name: Annotated[str, typer.Option("--name", help="The image's name.")],
    credentials_file: Annotated[
        Path | None,
        typer.Option(
            "--credentials-file",
            help="A file holding 'user:password' (or user and password on two lines); '-' reads it "
            "from stdin. Kept encrypted for the next pull from this registry.",
        ),
    ] = None,
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="Plain HTTP, allowed only to a registry on a loopback address.")
    ] = False,
    org: ImageOrg = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Pull an image from an OCI registry (HTTPS), verified and unpacked; layers present are reused."""
    credentials = None
    if credentials_file is not None:
        text = sys.stdin.read() if str(credentials_file) == "-" else _read_secret_file(credentials_file)
        try:
            credentials = skopeo.parse_credentials(text)
        except SandboxdError as exc:
            fail(exc.message)

    async def go(admin: Admin) -> dict[str, Any]:
        p, scope = await _image_scope(admin, org)
        return await admin.ops.pull_image(
            p, name, ref, _progress, credentials=credentials, plain_http=plain_http, **scope
        )

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@images_app.command("build")
def images_build(
    name: str,
    package: Annotated[list[str], typer.Option("--package", help="A Debian package to install. Repeatable.")],
    suite: Annotated[str, typer.Option("--suite", help="Debian release.")] = "bookworm",
    mirror: Annotated[str | None, typer.Option("--mirror", help="Debian mirror URL [default: apt's]")] = None,
    org: ImageOrg = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Build a Debian image from packages (mmdebstrap): the way to make the image your team wants."""

    async def go(admin: Admin) -> dict[str, Any]:
        p, scope = await _image_scope(admin, org)
        return await admin.ops.build_image(p, name, package, _progress, suite=suite, mirror=mirror, **scope)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@images_app.command("list")
def images_list(org: ImageOrg = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List images, one JSON object a line: an organization's and the built-in ones (no --org: all)."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        p, scope = await _image_scope(admin, org)
        return await admin.ops.list_images(p, **scope)

    for image in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(json.dumps(image))


@images_app.command("show")
def images_show(name: str, org: ImageOrg = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Show one image, with the disk its layers use (layers shared with other images included)."""

    async def go(admin: Admin) -> dict[str, Any]:
        p, scope = await _image_scope(admin, org)
        return await admin.ops.show_image(p, name, **scope)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@images_app.command("delete")
def images_delete(name: str, org: ImageOrg = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Delete an image no sandbox config uses; layers no other image uses are freed."""

    async def go(admin: Admin) -> None:
        p, scope = await _image_scope(admin, org)
        await admin.ops.delete_image(p, name, **scope)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {name}")


# --- orgs ---------------------------------------------------------------------------------


@orgs_app.command("create")
def orgs_create(name: str, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Create an organization (with its default sandbox config)."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.create_org(await _principal(admin, DEFAULT_ORG), name, exist_ok=True)

    org = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"{org['id']}\t{org['name']}")


@orgs_app.command("list")
def orgs_list(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List organizations."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        return await admin.ops.list_orgs(await _principal(admin, DEFAULT_ORG))

    for org in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(f"{org['id']}\t{org['name']}")


# --- webhooks -----------------------------------------------------------------------------


@webhooks_app.command("secret")
def webhooks_secret(
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace the existing secret.")] = False,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create (or --rotate) the organization's webhook signing secret and print it, once."""

    async def go(admin: Admin) -> str:
        return (await admin.ops.webhook_secret(await _principal(admin, org), rotate=rotate)).secret

    typer.echo(admin_call(settings_of(data_dir, database_url), go))
    typer.echo("verify deliveries with any Standard Webhooks library; this secret is not shown again", err=True)


# --- threads ------------------------------------------------------------------------------


@threads_app.command("list")
def threads_list(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List threads: id, host uid, created, last used."""

    async def go(admin: Admin) -> list[Any]:
        return await admin.threads.list((await admin.tenancy.org(org)).id)

    for t in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(f"{t.thread_id}\tuid {t.uid}\t{t.created_at:%Y-%m-%d %H:%M}\t{t.last_used_at:%Y-%m-%d %H:%M}")


@threads_app.command("show")
def threads_show(
    thread_id: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Show one thread, with the disk space its home uses."""

    async def go(admin: Admin) -> dict[str, Any]:
        t = await admin.threads.get((await admin.tenancy.org(org)).id, thread_id)
        return {
            "thread_id": t.thread_id,
            "uid": t.uid,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat(),
            "used_bytes": await admin.threads.usage_bytes(t),
            "home": str(admin.threads.home(t) or ""),
            "quota_bytes": admin.settings.thread_quota_mib * 1024 * 1024,
            # The image its home was last used with: `pip install --user` packages were built there.
            "last_image": t.image_digest,
        }

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@threads_app.command("delete")
def threads_delete(
    thread_id: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Delete a thread and its home."""

    async def go(admin: Admin) -> None:
        await admin.ops.delete_thread(await _principal(admin, org), thread_id)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {thread_id}")


# --- volumes ------------------------------------------------------------------------------


@volumes_app.command("create")
def volumes_create(
    name: str,
    quota: Annotated[int, typer.Option("--quota", help="Quota in MiB.")] = 1024,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a volume; bind it to keys with `keys create --volume NAME[:ro]`."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.create_volume(await _principal(admin, org), name, quota)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@volumes_app.command("list")
def volumes_list(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List volumes, one JSON object a line."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        return await admin.ops.list_volumes(await _principal(admin, org))

    for v in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(json.dumps(v))


@volumes_app.command("delete")
def volumes_delete(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Delete a volume that no active key is bound to, with its files."""

    async def go(admin: Admin) -> None:
        await admin.ops.delete_volume(await _principal(admin, org), name)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {name}")


# --- storage connections ----------------------------------------------------------------------


@storage_app.command("create")
def storage_create(
    name: Annotated[str, typer.Argument(help="Its name: the slug under /data/ (lowercase letters, digits, '_', '-').")],
    kind: Annotated[str, typer.Option("--type", help="s3 (and S3-compatible stores), gcs or azure.")],
    bucket: Annotated[str, typer.Option("--bucket", help="The bucket (Azure: the container).")],
    credentials_file: Annotated[
        Path,
        typer.Option(
            "--credentials-file",
            help="A JSON file of the credentials ('-' reads stdin): s3 {access_key_id, secret_access_key}; "
            "gcs a service-account key (or {\"anonymous\": true}); azure {account, key} or {account, sas_url}. "
            "Kept encrypted; never shown again.",
        ),
    ],
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="The service's URL (S3-compatible stores, emulators); https, or http to loopback.")
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="The bucket's region (s3).")] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Show only this path of the bucket to every key.")] = "",
    read_only: Annotated[bool, typer.Option("--read-only", help="No key may write through this connection.")] = False,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Connect a bucket; bind it to keys with `keys create --storage NAME[:ro][:prefix=PATH]`."""
    raw = sys.stdin.buffer.read() if str(credentials_file) == "-" else _read_secret_file(credentials_file).encode()
    spec = ConnectionSpec(name, kind, bucket, endpoint, region, prefix, read_only)

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.create_storage(await _principal(admin, org), spec, raw)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@storage_app.command("list")
def storage_list(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List storage connections, one JSON object a line (never their credentials)."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        return await admin.ops.list_storage(await _principal(admin, org))

    for connection in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(json.dumps(connection))


@storage_app.command("show")
def storage_show(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """One storage connection and the active keys bound to it (never its credentials)."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.show_storage(await _principal(admin, org), name)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go), indent=2))


@storage_app.command("test")
def storage_test(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Mount the connection, list it and unmount: says what failed (credentials, bucket, endpoint)."""

    async def go(admin: Admin) -> None:
        await admin.ops.test_storage(await _principal(admin, org), name)

    admin_call(settings_of(data_dir, database_url), go)  # MountFailed: its message, exit 1
    typer.echo(f"storage connection {name!r}: mounted, listed and unmounted")


@storage_app.command("delete")
def storage_delete(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Delete a storage connection no active key is bound to (the bucket is not touched)."""

    async def go(admin: Admin) -> None:
        await admin.ops.delete_storage(await _principal(admin, org), name)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {name}")


# --- connectors -----------------------------------------------------------------------------

connectors_app = typer.Typer(
    help="Connectors: credentials (env variables, databases, brokered HTTP APIs) given to keys' executions.",
    no_args_is_help=True,
)
app.add_typer(connectors_app, name="connectors")

SecretFile = Annotated[
    Path,
    typer.Option(
        "--secret-file",
        help="The secret ('-' reads stdin). env: a JSON object {NAME: value} or NAME=value lines; "
        "postgres/mysql: the database URL; http: the token. Kept encrypted; never shown again.",
    ),
]


def _read_secret(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
        raise  # unreachable


@connectors_app.command("create")
def connectors_create(
    name: Annotated[str, typer.Argument(help="Its name (lowercase letters, digits, '_', '-').")],
    kind: Annotated[str, typer.Option("--type", help="env, postgres, mysql or http (brokered).")],
    secret_file: SecretFile,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="http: a host the secret is for (api.example.com, *.example.com, host:port). Repeatable."),
    ] = None,
    header: Annotated[
        str | None, typer.Option("--header", help="http: the header that carries it [default 'Authorization: Bearer {secret}'].")
    ] = None,
    env_var: Annotated[
        str | None, typer.Option("--env-var", help="http: the variable that holds the placeholder in the sandbox.")
    ] = None,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a connector; bind it to keys with `keys create --connector NAME`."""
    from .connectors.kinds import Options

    raw = _read_secret(secret_file)
    options = Options(hosts=tuple(host or ()), header=header, env_var=env_var)

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.create_connector(await _principal(admin, org), name, kind, raw, options)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@connectors_app.command("update")
def connectors_update(
    name: str, secret_file: SecretFile, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace a connector's secret (its keys' next executions get the new one)."""
    raw = _read_secret(secret_file)

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.update_connector(await _principal(admin, org), name, raw)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go)))


@connectors_app.command("list")
def connectors_list(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List connectors, one JSON object a line (never their secrets)."""

    async def go(admin: Admin) -> list[dict[str, Any]]:
        return await admin.ops.list_connectors(await _principal(admin, org))

    for connector in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(json.dumps(connector))


@connectors_app.command("show")
def connectors_show(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """One connector and the active keys bound to it (never its secret)."""

    async def go(admin: Admin) -> dict[str, Any]:
        return await admin.ops.show_connector(await _principal(admin, org), name)

    typer.echo(json.dumps(admin_call(settings_of(data_dir, database_url), go), indent=2))


@connectors_app.command("delete")
def connectors_delete(
    name: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """Delete a connector no active key is bound to."""

    async def go(admin: Admin) -> None:
        await admin.ops.delete_connector(await _principal(admin, org), name)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"deleted {name}")


@connectors_app.command("rotate-key")
def connectors_rotate_key(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """A new key for every connector's secret: all re-encrypted, the old key dropped (safe beside a
    running server; servers sharing a database need the new key file)."""

    async def go(admin: Admin) -> int:
        return await admin.ops.rotate_connectors_key(await _principal(admin, DEFAULT_ORG))

    count = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"re-encrypted {count} connectors under a new key")
