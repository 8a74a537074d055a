"""Composition root: build the store, services and runtime from settings, in one place."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .config import Settings
from .observability import Metrics
from .runtime import BwrapRunner, Limits, check_sandbox, create_runner
from .runtime.landlock import abi_version as landlock_abi
from .runtime.pool import PoolSettings, WarmPool
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
from .service.files import FilesService
from .service.keycache import PrincipalCache
from .service.signing import Signer, files_signing_key
from .storage import Btrfs, ThreadStore, VolumeStore
from .storage import available as btrfs_available
from .store import Store, create_engine, migrate

log = logging.getLogger("sandboxd")


@dataclass
class Admin:
    """What the admin CLI needs: the store and the key and tenancy services; no sandbox runtime."""

    settings: Settings
    store: Store
    keys: KeyService
    tenancy: TenancyService
    webhooks: WebhookService
    threads: ThreadService
    volumes: VolumeService

    async def close(self) -> None:
        await self.threads.settle()
        await self.store.close()


@dataclass
class Services(Admin):
    executions: ExecutionService = field(default=None)  # type: ignore[assignment]
    limiter: ConcurrencyLimiter = field(default=None)  # type: ignore[assignment]
    auth_failures: AuthFailureLimiter = field(default=None)  # type: ignore[assignment]
    files: FilesService = field(default=None)  # type: ignore[assignment]
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    pool: WarmPool | None = None
    #: The sandbox runtime this server built (None when one was passed in, e.g. a test's).
    runtime: BwrapRunner | None = None

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
        if self.runtime is not None:
            await self.runtime.close()
        await self.webhooks.stop()
        await self.threads.stop()
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
    try:
        await migrate(store.engine)
        tenancy = TenancyService(store)
        await tenancy.ensure_defaults()
    except BaseException:
        await store.close()
        raise
    pepper = load_or_create_secret(settings.data_dir)
    fs = storage_fs(settings)
    webhooks = WebhookService(
        store,
        pepper,
        UrlGuard(allow_insecure=settings.webhook_allow_insecure),
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
        timeout_s=settings.webhook_timeout_s,
        metrics=metrics,
    )
    return Admin(
        settings=settings,
        store=store,
        keys=KeyService(
            store, pepper, PrincipalCache(settings.data_dir / "auth-epoch", settings.key_cache_ttl_s)
        ),
        tenancy=tenancy,
        webhooks=webhooks,
        threads=ThreadService(
            store,
            ThreadStore(fs, settings.thread_quota_mib * 1024 * 1024) if fs else None,
            thread_policy(settings),
            ThreadLocks(settings.data_dir / "locks" / "threads"),
        ),
        volumes=VolumeService(store, VolumeStore(fs) if fs else None),
    )


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
        tmp_mib=settings.tmp_size_mib,
        workdir_mib=settings.workdir_size_mib,
        home_mib=settings.home_size_mib,
        file_size_mib=settings.file_size_mib,
        open_files_max=settings.open_files_max,
        output_bytes=settings.output_limit_bytes,
    )


def build_runner(settings: Settings) -> BwrapRunner:
    """The real runtime; raises SandboxSetupError when this host cannot isolate code."""
    pooled = settings.pool_max_total if settings.pool_enabled else 0
    return create_runner(
        instance_key=settings.instance_id,
        uid_base=settings.sandbox_uid_base,
        slots=settings.max_concurrent + pooled + 8,
    )


def _pool_settings(settings: Settings) -> PoolSettings:
    return PoolSettings(
        max_per_key=settings.pool_max_per_key,
        max_total=settings.pool_max_total,
        memory_budget_bytes=settings.pool_memory_budget_mib * 1024 * 1024,
        idle_s=settings.pool_idle_s,
    )


async def start(settings: Settings, runner: Runner | None = None) -> Services:
    """Everything a server needs, self-checked. Fails closed: no sandbox, no service."""
    metrics = Metrics()
    admin = await open_admin(settings, metrics)
    pool: WarmPool | None = None
    real: BwrapRunner | None = None
    try:
        if runner is None:
            real = build_runner(settings)
            await check_sandbox(real)
            log.info("landlock ABI %d; not applied to sandboxes (docs/security.md)", landlock_abi())
            if settings.pool_enabled:
                pool = real.enable_pool(_pool_settings(settings), home_slots=settings.run_dir / "homes")
                pool.start()
            runner = real
        limiter = ConcurrencyLimiter(
            settings.max_concurrent, settings.max_concurrent_per_org, metrics,
            reserve=settings.admission_reserve_slots, wait_s=settings.admission_wait_s,
            queue_max=settings.admission_queue_max,
        )
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
        )
        await admin.threads.recover()
        interrupted = await executions.recover_interrupted()
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
    admin.webhooks.start()  # also resumes deliveries left pending by the last run
    admin.threads.start()
    return Services(
        settings=settings,
        store=admin.store,
        keys=admin.keys,
        tenancy=admin.tenancy,
        webhooks=admin.webhooks,
        threads=admin.threads,
        volumes=admin.volumes,
        executions=executions,
        limiter=limiter,
        auth_failures=AuthFailureLimiter(
            settings.auth_failures_allowed, settings.auth_failure_window_s, settings.auth_lockout_s,
            metrics=metrics,
        ),
        files=FilesService(
            admin.threads, admin.volumes, Signer(files_signing_key(load_or_create_secret(settings.data_dir)))
        ),
        metrics=metrics,
        ready=True,
        pool=pool,
        runtime=real,
    )


def _pool_sizes(pool: WarmPool, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        sizes = pool.sizes()
        for language in ("python", "node", "bash"):
            metrics.pool_sandboxes.labels(language).set(sizes.get(language, 0))

    return refresh


def _count_threads(admin: Admin, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        metrics.threads.set(await admin.store.threads.count())

    return refresh
