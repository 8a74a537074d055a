"""Runtime images end to end: `sandboxd images build | import | pull | list | show | delete`, a
sandbox config on an image, and runs on it through the official SDK against a real server.

One server for the module. The images: `mini`, built here with `images build` (python3-minimal
and bash, no node); `base`, the session's Debian layout imported as an OCI directory; `marked`,
`base` plus a layer of ours (a marker file, a python on a PATH of its own, an `Env`), imported as
an oci-archive and shared with `base` below its top layer.
"""

# ruff: noqa: F811  (the fixtures imported from _registry are redefined as parameters)

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest
from _layouts import Entry, archive, extend, layer
from _registry import LayoutImage, Registry, auth_registry, debian_image_layout, push, registry  # noqa: F401  (fixtures)
from _servers import EXECUTE, pool, storage_root
from conftest import Server, run_cli

from sandboxd.images import oci

__all__ = ["pool"]  # a fixture, imported so pytest finds it here

MARKER = "sandboxd-image-marker-7f3a"


def cli_ok(server: Server, *args: str, input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = server.cli(*args, input=input, timeout=timeout)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def cli_fails(server: Server, *args: str, input: str | None = None) -> str:
    p = server.cli(*args, input=input, timeout=600)
    assert p.returncode != 0, (args, p.stdout)
    return p.stderr


def images(server: Server, *args: str) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in map(json.loads, cli_ok(server, "images", "list", *args).stdout.splitlines())}


def key_on(server: Server, sandbox: str, image: str) -> str:
    cli_ok(server, "sandboxes", "create", sandbox, "--image", image)
    return cli_ok(server, "keys", "create", "--sandbox", sandbox).stdout.split()[0]


def image_trees(server: Server) -> dict[str, set[str]]:
    root = storage_root(server) / "images"
    return {kind: {p.name for p in (root / kind).iterdir()} for kind in ("layers", "roots")}


@dataclass
class World:
    server: Server
    mini: str
    marked: str
    base: str
    layouts: Path


@pytest.fixture(scope="module")
def world(pool: Any, debian_image_layout: LayoutImage, tmp_path_factory: pytest.TempPathFactory) -> World:
    server = pool.start(auth_failures_allowed=100_000)
    work = tmp_path_factory.mktemp("layouts")
    built = cli_ok(server, "images", "build", "mini", "--package", "python3-minimal", "--package", "bash")
    assert json.loads(built.stdout)["languages"] == ["bash", "python"]
    cli_ok(server, "images", "import", str(debian_image_layout.layout), "--name", "base")
    marked = extend(debian_image_layout.layout, work / "marked", [layer(
        Entry("opt/", kind="dir", mode=0o755),
        Entry(f"opt/{MARKER}", MARKER.encode()),
        Entry("opt/tools/", kind="dir", mode=0o755),
        Entry("opt/tools/bin/", kind="dir", mode=0o755),
        Entry("opt/tools/bin/python3", kind="symlink", link="/usr/bin/python3"),
    )], env={"PATH": "/opt/tools/bin:/usr/local/bin:/usr/bin:/bin", "GREETING": "from-image", "HOME": "/root"})
    cli_ok(server, "images", "import", str(archive(marked, work / "marked.tar")), "--name", "marked")
    return World(
        server, key_on(server, "on-mini", "mini"), key_on(server, "on-marked", "marked"),
        key_on(server, "on-base", "base"), work,
    )


@pytest.fixture
def sdk_on(world: World) -> Iterator[Any]:
    clients: list[baponi.Baponi] = []

    def make(key: str) -> baponi.Baponi:
        clients.append(baponi.Baponi(api_key=key, base_url=world.server.url))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


# --- list, show --------------------------------------------------------------------------------


def test_list_shows_host_and_the_images_with_their_languages(world: World) -> None:
    listed = images(world.server)
    assert listed["host"]["id"] is None
    assert listed["mini"]["languages"] == ["bash", "python"]
    assert listed["mini"]["digest"].startswith("sha256:") and len(listed["mini"]["digest"]) == 71
    assert listed["marked"]["source"].startswith("file ")
    assert listed["mini"]["source"] == "debian bookworm: python3-minimal bash"


def test_show_reports_disk_use_and_what_was_found(world: World) -> None:
    shown = json.loads(cli_ok(world.server, "images", "show", "marked").stdout)
    assert shown["layers"] == 2 and shown["disk_bytes"] > 10 * 2**20
    assert shown["binaries"]["python"] == "/opt/tools/bin/python3"  # first on the image's PATH
    assert shown["env"]["GREETING"] == "from-image"


# --- running on an image -----------------------------------------------------------------------


def test_python_and_bash_run_on_the_built_image_through_the_sdk(world: World, sdk_on: Any) -> None:
    sdk = sdk_on(world.mini)
    py = sdk.execute("import sys, os; print(sys.version_info[:2] >= (3, 8), os.getcwd())", language="python")
    assert (py.success, py.stdout) == (True, "True /data\n"), py
    sh = sdk.execute("cat /etc/debian_version >/dev/null && id -u && echo $HOME", language="bash")
    assert (sh.success, sh.stdout) == (True, "1000\n/home/baponi\n"), sh


def test_a_language_the_image_lacks_is_refused_naming_both(world: World, sdk_on: Any) -> None:
    with pytest.raises(baponi.APIValidationError) as info:
        sdk_on(world.mini).execute("console.log(1)", language="node")
    assert info.value.status_code == 400 and info.value.error_type == "validation_error"
    assert "'node'" in info.value.message and "'mini'" in info.value.message, info.value.message


def test_the_image_marker_is_inside_and_not_on_the_host(world: World, sdk_on: Any) -> None:
    out = sdk_on(world.marked).execute(f"cat /opt/{MARKER}", language="bash")
    assert out.stdout == MARKER, out
    assert not Path(f"/opt/{MARKER}").exists()


def test_image_env_and_path_apply_under_the_request_env(world: World, sdk_on: Any) -> None:
    code = "import os, sys; print(sys.executable, os.environ['GREETING'], os.environ['HOME'], os.environ['MINE'])"
    out = sdk_on(world.marked).execute(code, language="python", env_vars={"MINE": "req"})
    assert out.stdout == "/opt/tools/bin/python3 from-image /home/baponi req\n", out
    over = sdk_on(world.marked).execute("import os; print(os.environ['GREETING'])", env_vars={"GREETING": "request"})
    assert over.stdout == "request\n"


def test_the_image_is_read_only_and_host_files_are_absent(world: World, sdk_on: Any) -> None:
    code = "touch /usr/x 2>&1; touch /opt/y 2>&1; test -e /usr/local/bin/sandboxd && echo host-tools; echo done"
    out = sdk_on(world.base).execute(code, language="bash")
    assert "Read-only file system" in out.stdout and "host-tools" not in out.stdout and out.stdout.endswith("done\n")


def test_status_document_names_the_image(world: World) -> None:
    auth = {"Authorization": f"Bearer {world.mini}"}
    trace_id = httpx.post(f"{world.server.url}{EXECUTE}", headers=auth, json={"code": "print(1)"}, timeout=60).json()["trace_id"]
    doc = httpx.get(f"{world.server.url}/v1/executions/{trace_id}", headers=auth).json()
    digest = images(world.server)["mini"]["digest"]
    assert doc["image"] == {"name": "mini", "digest": digest}


def test_warm_pools_are_kept_per_image(world: World) -> None:
    def hits() -> float:
        text = httpx.get(f"{world.server.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('sandboxd_pool_requests_total{result="hit"}'))

    def run(key: str) -> str:
        r = httpx.post(f"{world.server.url}{EXECUTE}", headers={"Authorization": f"Bearer {key}"},
                       json={"code": "print(open('/etc/debian_version').read().strip() != '')"}, timeout=60)
        return r.json()["stdout"]  # type: ignore[no-any-return]

    for key in (world.mini, world.base):
        assert run(key) == "True\n"
        time.sleep(1.0)  # the replacement sandbox starts after the run
    before = hits()
    assert run(world.mini) == "True\n" and run(world.base) == "True\n"
    assert hits() >= before + 2


def test_a_thread_keeps_its_home_across_images_and_remembers_the_last(world: World, sdk_on: Any) -> None:
    first = sdk_on(world.base).execute("echo kept > ~/note; echo ok", language="bash", thread_id="img-thread")
    assert first.stdout == "ok\n", first
    second = sdk_on(world.mini).execute("print(open('/home/baponi/note').read())", thread_id="img-thread")
    assert second.stdout == "kept\n\n", second
    time.sleep(0.5)  # the last use is recorded off the request's path
    shown = json.loads(cli_ok(world.server, "threads", "show", "img-thread").stdout)
    assert shown["last_image"] == images(world.server)["mini"]["digest"]


# --- pull -------------------------------------------------------------------------------------


def test_pull_from_a_loopback_registry_over_plain_http(world: World, registry: Registry,
                                                       debian_image_layout: LayoutImage, sdk_on: Any) -> None:
    digest = push(debian_image_layout.transport, registry, "team/base:1")
    pulled = json.loads(cli_ok(world.server, "images", "pull", f"{registry.host}/team/base:1", "--name", "pulled",
                               "--plain-http").stdout)
    assert pulled["digest"] == digest and pulled["source"] == f"registry {registry.host}/team/base:1"
    # the same layers as `base`: nothing unpacked again, one tree more (the root)
    assert pulled["languages"] == ["bash", "python"]
    key = key_on(world.server, "on-pulled", "pulled")
    assert sdk_on(key).execute("print(7*6)").stdout == "42\n"


def test_pull_with_credentials_from_stdin_kept_sealed_and_used_again(
    world: World, auth_registry: Registry, debian_image_layout: LayoutImage
) -> None:
    user, password = auth_registry.username, auth_registry.password
    assert user and password
    push(debian_image_layout.transport, auth_registry, "private/base:1", creds=(user, password))
    ref = f"{auth_registry.host}/private/base:1"
    refused = cli_fails(world.server, "images", "pull", ref, "--name", "private", "--plain-http")
    assert "credentials" in refused and password not in refused, refused
    wrong = cli_fails(world.server, "images", "pull", ref, "--name", "private", "--plain-http",
                      "--credentials-file", "-", input=f"{user}:not-{password}")
    assert "refused the credentials" in wrong and password not in wrong, wrong
    cli_ok(world.server, "images", "pull", ref, "--name", "private", "--plain-http", "--credentials-file", "-",
           input=f"{user}:{password}\n")
    database = (world.server.data_dir / "sandboxd.db").read_bytes()
    assert password.encode() not in database and user.encode() not in database  # sealed, not stored plain
    with sqlite3.connect(world.server.data_dir / "sandboxd.db") as db:
        rows = db.execute("SELECT registry FROM registry_credentials").fetchall()
    assert rows == [(auth_registry.host,)]
    # the next pull from that registry needs no credentials: the sealed ones are used
    cli_ok(world.server, "images", "pull", ref, "--name", "private-again", "--plain-http")
    assert {"private", "private-again"} <= set(images(world.server))


def test_a_pull_is_stopped_at_the_size_limit_and_leaves_nothing(world: World, registry: Registry, tmp_path: Path) -> None:
    big = extend(None, tmp_path / "big", [layer(Entry("noise", os.urandom(48 * 2**20)))])
    push(f"oci:{big}:latest", registry, "team/big:1")
    blobs = world.server.data_dir / "images" / "oci" / "blobs" / "sha256"
    before = set(os.listdir(blobs))
    p = run_cli("images", "pull", f"{registry.host}/team/big:1", "--name", "big", "--plain-http",
                "--data-dir", str(world.server.data_dir), env={"SANDBOXD_MAX_IMAGE_SIZE_MIB": "8"}, timeout=600)
    assert p.returncode != 0 and "its download was stopped" in p.stderr, p.stderr
    assert "big" not in images(world.server)  # and `list` removed what the stopped copy wrote
    assert set(os.listdir(blobs)) == before
    assert not [e for e in os.listdir(blobs.parent.parent) if e.startswith((".tmp-", "oci-put-blob"))]


def test_pull_refuses_plain_http_to_a_remote_registry_and_a_wrong_digest(world: World, registry: Registry) -> None:
    # In an empty network namespace: were the guard to fail, skopeo could still reach nothing.
    remote = subprocess.run(
        ["unshare", "--net", *_cli(), "images", "pull", "registry.example.com/x:1", "--name", "x", "--plain-http",
         "--data-dir", str(world.server.data_dir)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert remote.returncode != 0, remote.stdout
    assert "plain HTTP is allowed only to a loopback registry" in remote.stderr, remote.stderr
    wrong = cli_fails(world.server, "images", "pull", f"{registry.host}/team/base@sha256:{'0' * 64}",
                      "--name", "wrong", "--plain-http")
    assert "wrong" not in images(world.server), wrong


# --- delete, limits, leftovers --------------------------------------------------------------


def test_delete_is_refused_while_a_sandbox_config_uses_it(world: World) -> None:
    cli_ok(world.server, "images", "import", str(world.layouts / "marked"), "--name", "doomed")
    cli_ok(world.server, "sandboxes", "create", "uses-doomed", "--image", "doomed")
    err = cli_fails(world.server, "images", "delete", "doomed")
    assert "used by sandbox configs: uses-doomed" in err, err
    cli_ok(world.server, "sandboxes", "update", "uses-doomed", "--image", "host")
    cli_ok(world.server, "images", "delete", "doomed")
    assert "doomed" not in images(world.server)
    # `marked` shares every layer with `doomed`: its own root and layers are still there
    listed = images(world.server)
    trees = image_trees(world.server)
    assert listed["marked"]["id"] in trees["roots"] and len(trees["roots"]) == len(listed) - 1  # not host


def test_the_limit_per_organization_is_a_clear_refusal(world: World, debian_image_layout: LayoutImage) -> None:
    server = world.server
    cli_ok(server, "orgs", "create", "capped")
    cli_ok(server, "plans", "create", "one-image", "--org", "capped", "--images", "1")
    cli_ok(server, "plans", "assign", "capped", "one-image")
    env: dict[str, str] = {}
    first = run_cli("images", "import", str(debian_image_layout.layout), "--name", "one", "--org", "capped",
                    "--data-dir", str(server.data_dir), env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    second = run_cli("images", "import", str(debian_image_layout.layout), "--name", "two", "--org", "capped",
                     "--data-dir", str(server.data_dir), env=env, timeout=600)
    assert second.returncode != 0
    assert "custom image limit reached (1/1): the custom plan 'one-image' allows 1 custom images" in second.stderr, \
        second.stderr
    assert "two" not in images(server, "--org", "capped") and "one" in images(server, "--org", "capped")
    # an organization's image is its own: another one can neither see nor use it
    assert "one" not in images(server, "--org", "default")
    err = cli_fails(server, "sandboxes", "create", "steal", "--image", "one")
    assert "no image 'one' in organization 'default'" in err, err


def test_an_image_for_another_architecture_is_refused(world: World, tmp_path: Path) -> None:
    other = "arm64" if oci.host_architecture() != "arm64" else "amd64"
    foreign = extend(None, tmp_path / "foreign", [layer(Entry("x", b"x"))], architecture=other)
    err = cli_fails(world.server, "images", "import", str(foreign), "--name", "foreign")
    assert f"the image is built for {other}; this server runs {oci.host_architecture()}" in err, err
    assert "foreign" not in images(world.server)


def test_changing_a_configs_image_applies_to_its_keys_next_runs(world: World, sdk_on: Any) -> None:
    """The key cache of the live server is told (an epoch file): no restart, no stale image."""
    key = key_on(world.server, "switching", "marked")
    code = f"test -e /opt/{MARKER} && echo image || echo host"
    assert sdk_on(key).execute(code, language="bash").stdout == "image\n"
    cli_ok(world.server, "sandboxes", "update", "switching", "--image", "host")
    assert sdk_on(key).execute(code, language="bash").stdout == "host\n"
    assert json.loads(cli_ok(world.server, "sandboxes", "show", "switching").stdout)["image"] == "host"


def test_a_decompression_bomb_stops_at_the_limit_and_leaves_nothing(world: World, tmp_path: Path) -> None:
    bomb = extend(None, tmp_path / "bomb", [layer(Entry("zeros", bytes(96 * 2**20)))])  # gzip: ~100 KiB
    before = image_trees(world.server)
    p = run_cli("images", "import", str(bomb), "--name", "bomb", "--data-dir", str(world.server.data_dir),
                env={"SANDBOXD_MAX_IMAGE_SIZE_MIB": "64"}, timeout=600)
    assert p.returncode != 0 and "larger than the limit of 64 MiB" in p.stderr, p.stderr
    assert "bomb" not in images(world.server) and image_trees(world.server) == before


def test_a_killed_import_leaves_nothing(world: World, tmp_path: Path) -> None:
    big = extend(None, tmp_path / "big", [layer(*(Entry(f"f{i}", os.urandom(8 * 2**20)) for i in range(20)))])
    before = image_trees(world.server)
    proc = subprocess.Popen(
        [*_cli(), "images", "import", str(big), "--name", "killed", "--data-dir", str(world.server.data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    layers = storage_root(world.server) / "images" / "layers"
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".tmp-") for p in layers.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "killed" not in images(world.server)  # and `list` cleaned up what the kill left
    assert image_trees(world.server) == before
    index = json.loads((world.server.data_dir / "images" / "oci" / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert tags == {i["id"] for i in images(world.server).values() if i["id"]}


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "sandboxd"]


def test_a_deleted_image_a_live_server_ran_on_stays_until_that_server_stops(pool: Any, world: World) -> None:
    server = pool.start()
    cli_ok(server, "images", "import", str(world.layouts / "marked"), "--name", "transient")
    image_id = images(server)["transient"]["id"]
    key = key_on(server, "t-sb", "transient")
    with baponi.Baponi(api_key=key, base_url=server.url) as sdk:
        assert sdk.execute(f"cat /opt/{MARKER}", language="bash").stdout == MARKER
    cli_ok(server, "sandboxes", "update", "t-sb", "--image", "host")
    cli_ok(server, "images", "delete", "transient")
    assert "transient" not in images(server)
    assert image_id in image_trees(server)["roots"]  # the server may still run on it (a warm sandbox)
    server.stop()
    images(server)  # the next images command collects it
    assert image_id not in image_trees(server)["roots"]
