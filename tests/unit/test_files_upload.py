"""An upload to a thread that has not run yet creates it (service/files.py), under the rules of
a first run (ThreadService.claim): plain directories stand in for btrfs, a real SQLite store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandboxd.errors import Conflict, Forbidden, NotFound
from sandboxd.service.files import FilesService
from sandboxd.service.keys import Principal
from sandboxd.service.signing import Signer
from sandboxd.service.storage_kind import StorageKind
from sandboxd.service.tenancy import TenancyService
from sandboxd.service.threads import ThreadLocks, ThreadPolicy, ThreadService
from sandboxd.storage import OrgQuotaReached
from sandboxd.store import Store

THREAD = StorageKind.THREAD


@dataclass
class FakeOrgs:
    full: bool = False

    async def make_room(self, org_id: str, needed: int) -> None:
        return None

    def check_room(self, org_id: str) -> None:
        if self.full:
            raise OrgQuotaReached(64 << 20, 64 << 20)


@dataclass
class FakeHomes:
    """ThreadStore's homes as plain directories."""

    root: Path
    orgs: FakeOrgs = field(default_factory=FakeOrgs)

    async def make_room(self, org_id: str) -> None:
        return None

    def home(self, org_id: str, thread_id: str) -> Path | None:
        path = self.root / org_id / thread_id / "home"
        return path if path.is_dir() else None

    def create_home(self, org_id: str, thread_id: str, uid: int, gid: int) -> Path:
        path = self.root / org_id / thread_id / "home"
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
        return path


class NoKeys:
    async def principal_of(self, key_id: str) -> Principal | None:
        return None


@dataclass
class World:
    files: FilesService
    threads: ThreadService
    homes: FakeHomes
    principal: Principal


async def world(store: Store, tmp_path: Path, max_per_org: int = 10) -> World:
    tenancy = TenancyService(store)
    org = await tenancy.ensure_defaults()
    principal = Principal(key=None, org=org, sandbox=await tenancy.sandbox(org, "default"))
    homes = FakeHomes(tmp_path / "homes")
    threads = ThreadService(
        store, homes, ThreadPolicy(max_per_org=max_per_org), ThreadLocks(tmp_path / "locks")  # type: ignore[arg-type]
    )
    files = FilesService(threads, None, Signer(bytes(32)), NoKeys())
    return World(files, threads, homes, principal)


@pytest.fixture
async def w(store: Store, tmp_path: Path) -> World:
    built = await world(store, tmp_path)
    yield built
    await built.threads.settle()


async def test_an_upload_creates_the_thread_and_its_home(w: World) -> None:
    with pytest.raises(NotFound):
        await w.threads.get(w.principal.org.id, "fresh")
    assert await w.files.write(w.principal, THREAD, "fresh", "/home/baponi/in/data.csv", b"a,b\n1,2\n") == "in/data.csv"
    thread = await w.threads.get(w.principal.org.id, "fresh")
    home = w.homes.home(w.principal.org.id, "fresh")
    assert home is not None and (home / "in" / "data.csv").read_bytes() == b"a,b\n1,2\n"
    st = (home / "in" / "data.csv").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (thread.uid, 0o600)  # the thread's own uid, as a run's files
    listed = await w.files.list(w.principal, THREAD, "fresh")
    assert {e["path"] for e in listed} == {"in", "in/data.csv"}
    # the same thread again: no second record, the file replaced
    await w.files.write(w.principal, THREAD, "fresh", "in/data.csv", b"x")
    assert (home / "in" / "data.csv").read_bytes() == b"x"
    assert len(await w.threads.list(w.principal.org.id)) == 1


async def test_an_upload_respects_the_thread_limit(store: Store, tmp_path: Path) -> None:
    w = await world(store, tmp_path, max_per_org=1)
    try:
        await w.files.write(w.principal, THREAD, "first", "a.txt", b"1")
        with pytest.raises(Forbidden, match="limit of 1 threads"):
            await w.files.write(w.principal, THREAD, "second", "a.txt", b"2")
        assert [t.thread_id for t in await w.threads.list(w.principal.org.id)] == ["first"]
        assert w.homes.home(w.principal.org.id, "second") is None
    finally:
        await w.threads.settle()


async def test_an_upload_respects_the_storage_cap(w: World) -> None:
    w.homes.orgs.full = True
    with pytest.raises(Forbidden, match="storage quota"):
        await w.files.write(w.principal, THREAD, "capped", "a.txt", b"1")
    assert await w.threads.list(w.principal.org.id) == []


async def test_an_upload_to_a_busy_thread_is_a_conflict(w: World) -> None:
    copy = await w.threads.claim(w.principal.org.id, "busy", "trc_running")
    try:
        with pytest.raises(Conflict):
            await w.files.write(w.principal, THREAD, "busy", "a.txt", b"1")
    finally:
        await w.threads.release(copy)
    await w.files.write(w.principal, THREAD, "busy", "a.txt", b"1")
