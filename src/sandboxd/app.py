"""Composition root: build the store, services and runtime from settings, in one place."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields

from .config import Settings
from .observability import Metrics
from .runtime import INTERPRETERS, BwrapRunner, Limits, PooledRunner, PoolSettings, Role, check_sandbox, create_runner
from .runtime.landlock import abi_version as landlock_abi
from .runtime.network import Network
from .runtime.pool import WarmPool
from .service import (
    AuthFailureLimiter,
    ConcurrencyLimiter,
    ExecutionService,
    KeyService,
    Runner,
    TenancyService,
    ThreadLocks,
    ThreadPolicy,
    ThreadService,
    UrlGuard,
    VolumeService,
    WebhookService,
    load_or_create_secret,
)
from .images.store import ImageStore
from .images.unpack import UnpackLimits
from .service.files import FilesService
from .service.images import ImageService
from .service.admin import AdminOps
from .service.plans import PlanService
from .service.usage import UsageService
from .service.sealing import Sealer
from .connectors.keyring import Keyring
from .service.connectors import ConnectorService
from .service.storage import StorageService
from .buckets.mounts import BucketMounts
from .service.health import PlatformHealth
from .service.events import EventSettings
from .service.invalidation import EpochFile
from .service.keycache import PrincipalCache
from .service.node import load_or_create_node_id
from .service.recovery import NodeRecovery, Recovery
from .service.artifacts import Artifacts
from .service.audit import AuditLog, audit_key
from .service.members import MemberService
from .service.sessions import Sessions, SessionSettings
from .service.retention import RetentionService
from .service.signing import Signer, files_signing_key
from .service.webhook_claims import LeaseClaims
from .storage import Btrfs, OrgQuotas, ThreadStore, VolumeStore
from .storage import available as btrfs_available
from .store import Store, create_engine, migrate

log = logging.getLogger("sandboxd")


@dataclass
class Admin:
    """What the admin CLI needs: the store and the key and tenancy services; no sandbox runtime."""

    settings: Settings
    #: This server's name among those sharing the database (service/node.py).
    node_id: str
    store: Store
    keys: KeyService
    tenancy: TenancyService
    webhooks: WebhookService
    threads: ThreadService
    volumes: VolumeService
    images: ImageService
    storage: StorageService
    connectors: ConnectorService
    plans: PlanService
    usage: UsageService
    #: The audit log (service/audit.py).
    audit: AuditLog
    members: MemberService

    @property
    def ops(self) -> AdminOps:
        """The audited admin operations: what the CLI, the admin API and the console call."""
        return AdminOps(
            store=self.store, keys=self.keys, tenancy=self.tenancy, images=self.images, volumes=self.volumes,
            storage=self.storage, connectors=self.connectors, webhooks=self.webhooks, members=self.members,
            threads=self.threads, plans=self.plans, usage=self.usage, audit=self.audit,
        )

    async def close(self) -> None:
        await self.threads.settle()
        await self.keys.settle()
        await self.store.close()


@dataclass
class Services(Admin):
    executions: ExecutionService
    limiter: ConcurrencyLimiter
    auth_failures: AuthFailureLimiter
    files: FilesService
    retention: RetentionService | None = None
    #: Files runs left in /data/outputs (service/artifacts.py); None: not kept.
    artifacts: Artifacts | None = None
    metrics: Metrics = field(default_factory=Metrics)
    #: False while starting and once a drain began.
    ready: bool = False
    #: Platform errors and the self-check that ends a not-ready spell after repeated ones.
    health: PlatformHealth | None = None
    pool: WarmPool | None = None
    #: The sandbox runtime this server built (None when one was passed in, e.g. a test's).
    runtime: Runner | None = None
    #: Persistent sessions (a server's; `sandboxd run` has none).
    sessions: Sessions | None = None

    def unready_reason(self) -> str | None:
        """Why /ready answers 503 (no host paths: it is unauthenticated); None when ready."""
        if not self.ready:
            closing = self.executions is not None and self.executions.closing
            return "shutting down" if closing else "sandbox runtime not ready"
        return self.health.unready_reason if self.health is not None else None

    async def drain(self) -> None:
        """Stop admitting (not ready; new executions 503), give running executions the grace
        period, then kill them and record them interrupted. The API keeps answering meanwhile."""
        self.ready = False
        self.limiter.close()  # first: no waiter takes a slot a draining run gives back
        await self.executions.shutdown(self.settings.shutdown_grace_s)

    async def close(self) -> None:
        """Drain (at once if a drain was already under way), stop deliveries, close the store."""
        self.ready = False
        if self.limiter is not None:
            self.limiter.close()
        if self.executions is not None:
            grace_s = 0.0 if self.executions.closing else self.settings.shutdown_grace_s
            await self.executions.shutdown(grace_s)
        if self.health is not None:
            await self.health.close()
        if self.sessions is not None:  # before the runtime: their sandboxes are its
            await self.sessions.close()
        if self.runtime is not None:
            await self.runtime.close()
        if self.storage.mounts is not None:  # after the runtime: no warm sandbox holds one
            await self.storage.mounts.close()
        if self.retention is not None:
            await self.retention.stop()
        await self.webhooks.stop()
        await self.threads.stop()
        await self.keys.settle()
        await self.store.close()


def prepare_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)  # secret, database, storage image: root's alone
    os.umask(0o077)
    for path in settings.data_dir.iterdir():
        if path.is_file():
            os.chmod(path, 0o600)


async def open_admin(settings: Settings, metrics: Metrics | None = None) -> Admin:
    prepare_data_dir(settings)
    store = Store(create_engine(settings.effective_database_url))
    pepper = load_or_create_secret(settings.data_dir)
    plans = PlanService(store, settings.default_plan)
    keys = KeyService(
        store, pepper, PrincipalCache(EpochFile(settings.data_dir / "auth-epoch"), settings.key_cache_ttl_s),
        plans,
    )
    plans.changed = keys.invalidate
    try:
        await migrate(store.engine)
        tenancy = TenancyService(store, keys.invalidate, plans)
        await tenancy.ensure_defaults()
    except BaseException:
        await store.close()
        raise
    node_id = settings.node_id or load_or_create_node_id(settings.data_dir)
    fs = storage_fs(settings)
    orgs = OrgQuotas(fs, settings.org_storage_quota_mib * 1024 * 1024) if fs else None
    webhooks = WebhookService(
        store,
        pepper,
        UrlGuard(allow_insecure=settings.webhook_allow_insecure),
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
        timeout_s=settings.webhook_timeout_s,
        metrics=metrics,
        claims=LeaseClaims(store, node_id),
    )
    return Admin(
        settings=settings,
        node_id=node_id,
        store=store,
        keys=keys,
        tenancy=tenancy,
        webhooks=webhooks,
        threads=ThreadService(
            store,
            ThreadStore(fs, settings.thread_quota_mib * 1024 * 1024, orgs) if fs and orgs else None,
            thread_policy(settings),
            ThreadLocks(settings.data_dir / "locks" / "threads"),
        ),
        volumes=VolumeService(store, VolumeStore(fs, orgs) if fs and orgs else None),
        images=ImageService(
            store,
            ImageStore(fs, settings.data_dir / "images", image_limits(settings)) if fs else None,
            Sealer(pepper, "registry credentials"),
            changed=keys.invalidate,
            plans=plans,
        ),
        # Mounts are a server's (`start`); the CLI's `storage test` mounts in a directory of its own.
        storage=StorageService(
            store, Sealer(pepper, "storage credentials"), work_dir=settings.run_dir / "storage-tests"
        ),
        connectors=ConnectorService(store, Keyring(settings.effective_connectors_key_file), keys.invalidate),
        plans=plans,
        usage=UsageService(store),
        audit=AuditLog(store, audit_key(pepper)),
        members=MemberService(store, pepper, session_ttl_s=settings.console_session_ttl_s),
    )


def image_limits(settings: Settings) -> UnpackLimits:
    return UnpackLimits(max_bytes=settings.max_image_size_mib * 1024 * 1024, max_files=settings.max_image_files)


def storage_fs(settings: Settings) -> Btrfs | None:
    """Threads and volumes live on btrfs; None (they are refused, 503) where it cannot be used."""
    if not btrfs_available():
        log.warning("btrfs-progs not installed: threads and volumes are unavailable")
        return None
    return Btrfs(settings.data_dir / "storage.img", settings.storage_mount_point, settings.storage_size_gib)


def thread_policy(settings: Settings) -> ThreadPolicy:
    return ThreadPolicy(
        uid_base=settings.thread_uid_base,
        max_per_org=settings.max_threads_per_org,
        retention_days=settings.thread_retention_days,
    )


def sandbox_defaults(settings: Settings) -> Limits:
    """Per-sandbox limits that are server settings; each sandbox config sets CPU and memory."""
    return Limits(
        pids_max=settings.pids_max,
        tmp_size_mib=settings.tmp_size_mib,
        workdir_size_mib=settings.workdir_size_mib,
        home_size_mib=settings.home_size_mib,
        file_size_mib=settings.file_size_mib,
        open_files_max=settings.open_files_max,
        output_limit_bytes=settings.output_limit_bytes,
        outputs_size_mib=settings.outputs_size_mib,
        outputs_max_files=settings.outputs_max_files,
    )


def event_settings(settings: Settings) -> EventSettings:
    return EventSettings(
        output_interval_s=settings.output_event_interval_ms / 1000,
        output_max_bytes=settings.output_event_max_bytes,
        max_output_events=settings.max_output_events,
        flush_interval_s=settings.event_flush_interval_ms / 1000,
    )


#: Host uids of one server's threads: `thread_uid_base` and this many above it (tombstones
#: keep uids unique, so a long-lived server uses one per thread it ever created).
THREAD_UIDS = 1_000_000


def sandbox_uids(settings: Settings) -> range:
    """The host uids a server of these settings gives its sandboxes."""
    pooled = settings.pool_max_total if settings.pool_enabled else 0
    return range(settings.sandbox_uid_base, settings.sandbox_uid_base + settings.max_concurrent + pooled + 8)


def thread_uids(settings: Settings) -> range:
    return range(settings.thread_uid_base, settings.thread_uid_base + THREAD_UIDS)


def build_runner(settings: Settings, role: Role = "server") -> BwrapRunner:
    """The real runtime; raises SandboxSetupError when this host cannot isolate code, or when
    it would share cgroups or host uids with a live instance (runtime/lease.py).

    A server owns its data dir's instance and its configured uid ranges; `run` and `doctor`
    take a parent cgroup of their own and sandbox uids clear of every live instance and of
    the ranges their data dir's server is configured for.
    """
    uids = sandbox_uids(settings)
    network = Network(ca_dir=settings.data_dir / "ca", upstream_ca_file=settings.broker_upstream_ca_file)
    if role == "server":
        return create_runner(
            instance_key=settings.instance_id, uid_base=uids.start, slots=len(uids),
            thread_uids=thread_uids(settings), listen=f"{settings.host}:{settings.port}",
            data_dir=str(settings.data_dir), network=network, outputs_dir=settings.run_dir / "outputs",
        )
    return create_runner(
        instance_key=settings.instance_id, uid_base=uids.stop, slots=settings.max_concurrent + 8,
        role=role, avoid=(uids, thread_uids(settings)), data_dir=str(settings.data_dir), network=network,
        outputs_dir=settings.run_dir / f"outputs-{role}{os.getpid()}",
    )


def _pool_settings(settings: Settings) -> PoolSettings:
    return PoolSettings(
        max_per_key=settings.pool_max_per_key,
        max_total=settings.pool_max_total,
        memory_budget_bytes=settings.pool_memory_budget_mib * 1024 * 1024,
        idle_s=settings.pool_idle_s,
    )


async def start(settings: Settings, runner: Runner | None = None, *, role: Role = "server") -> Services:
    """Everything a server needs, self-checked. Fails closed: no sandbox, no service.

    `role="run"` is `sandboxd run` beside (maybe) a live server on the same data dir: it takes
    no pool, recovers nothing and starts no background work, so nothing of that server's state
    (its executions, thread working copies, webhook deliveries, home slots) is touched.
    """
    server = role == "server"
    metrics = Metrics()
    admin = await open_admin(settings, metrics)
    pool: WarmPool | None = None
    real: Runner | None = None
    try:
        if runner is None:
            cold = real = build_runner(settings, role)
            await check_sandbox(cold)
            log.info("landlock ABI %d; not applied to sandboxes (docs/security.md)", landlock_abi())
            if settings.pool_enabled and server:
                real = PooledRunner(cold, _pool_settings(settings), home_slots=settings.run_dir / "homes")
                pool = real.pool
                pool.start()
            runner = real
            checked: Runner = cold  # the host as it is now, never a pre-spawned sandbox
        else:
            checked = runner  # a test's runner: its own run
        health = PlatformHealth(
            metrics,
            lambda: check_sandbox(checked),
            threshold=settings.platform_error_threshold,
            window_s=settings.platform_error_window_s,
            recheck_s=settings.selfcheck_interval_s,
        )
        artifacts = Artifacts(
            settings.data_dir / "artifacts",
            Signer(files_signing_key(load_or_create_secret(settings.data_dir))),
            admin.store,
            retention_s=min(settings.artifact_retention_s, settings.execution_retention_days * 86400 or 2**62),
        )
        limiter = ConcurrencyLimiter(
            settings.max_concurrent, settings.max_concurrent_per_org, metrics,
            reserve=settings.admission_reserve_slots, wait_s=settings.admission_wait_s,
            queue_max=settings.admission_queue_max,
        )
        sessions = Sessions(
            admin.store,
            SessionSettings(
                idle_s=settings.session_idle_s, memory_budget_mib=settings.session_memory_budget_mib,
                max_per_org=settings.session_max_per_org,
            ),
            admin.threads.discard_path,
            admin.threads.save_workspace,
        ) if server else None
        admin.threads.sessions = sessions
        executions = ExecutionService(
            admin.store,
            runner,
            limiter,
            sandbox_defaults(settings),
            admin.webhooks,
            admin.threads,
            admin.volumes,
            keepalive_s=settings.keepalive_interval_s,
            metrics=metrics,
            health=health,
            events=event_settings(settings),
            node_id=admin.node_id,
            images=admin.images,
            storage=admin.storage,
            connectors=admin.connectors,
            artifacts=artifacts,
            sessions=sessions,
            audit=admin.audit,
        )
        if server:  # the lease of the data dir is ours: what is unfinished was left by a dead run
            admin.storage.mounts = BucketMounts(
                settings.run_dir / "buckets", settings.data_dir / "bucket-cache",
                idle_s=settings.storage_mount_idle_s, cache_max_mib=settings.storage_cache_max_mib,
            )
            if stale := admin.storage.mounts.recover():
                log.warning("unmounted %d bucket mounts left by the last run", stale)
            if pool is not None:
                admin.storage.mounts.before_unmount = lambda path: pool.discard(str(path))
            await admin.threads.recover()
            if sessions is not None:
                await sessions.recover()
            await admin.images.clean()
            recovery: Recovery = NodeRecovery(admin.store, admin.node_id, admin.audit)
            interrupted = await recovery.recover()
            if interrupted:
                log.warning("marked %d executions interrupted by the last shutdown as failed", interrupted)
    except BaseException:
        if real is not None:
            await real.close()
        await admin.close()
        raise
    metrics.on_scrape(_count_threads(admin, metrics))
    if pool is not None:
        metrics.on_scrape(_pool_sizes(pool, metrics))
        pool.on_take = lambda hit: metrics.pool_requests.labels("hit" if hit else "miss").inc()
    retention: RetentionService | None = None
    if server:
        admin.webhooks.start()  # also resumes deliveries left pending by the last run
        admin.threads.start()
        if sessions is not None:
            sessions.start()
        retention = RetentionService(
            admin.store, execution_retention_days=settings.execution_retention_days, artifacts=artifacts,
            audit=admin.audit, plans=admin.plans,
        )
        retention.start()
    return Services(
        **{f.name: getattr(admin, f.name) for f in fields(Admin)},
        executions=executions,
        limiter=limiter,
        auth_failures=AuthFailureLimiter(
            settings.auth_failures_allowed, settings.auth_failure_window_s, settings.auth_lockout_s,
            metrics=metrics,
        ),
        files=FilesService(
            admin.threads,
            admin.volumes,
            Signer(files_signing_key(load_or_create_secret(settings.data_dir))),
            admin.keys,
            audit=admin.audit,
        ),
        metrics=metrics,
        retention=retention,
        artifacts=artifacts,
        ready=True,
        health=health,
        pool=pool,
        runtime=real,
        sessions=sessions,
    )


def _pool_sizes(pool: WarmPool, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        sizes = pool.sizes()
        for language in INTERPRETERS:
            metrics.pool_sandboxes.labels(language).set(sizes.get(language, 0))

    return refresh


def _count_threads(admin: Admin, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        metrics.threads.set(await admin.store.threads.count())

    return refresh
