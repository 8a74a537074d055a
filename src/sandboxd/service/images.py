"""Runtime images: import, pull, build, list, show, delete; and the image a key's runs use.

An image belongs to an organization, or is built in (no organization: every one can use it);
`host`, the host's own /usr, is built in and is what a sandbox config without an image runs
on. Every change to the stored images happens under the image store's lock (images/store.py),
database row included, so a concurrent command or server never sees a root without its row or
collects one it is about to record.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Conflict, ImageError, NotFound, Unavailable
from ..ids import NAME_PATTERN, NAME_RULE, new_id
from ..images import debian, oci, skopeo
from ..images.store import ImageStore, Progress, StoreLock
from ..runtime import HOST_IMAGE, RootImage
from ..store import Image, Org, Store, utcnow
from .plans import PlanService, check_image_count
from .sealing import Sealer

HOST = HOST_IMAGE.name
_NAME = re.compile(NAME_PATTERN)
#: Registry credentials of built-in images (no organization) are stored under this owner.
_NO_ORG = ""


@dataclass(frozen=True)
class ImageInfo:
    """An image as `images show` reports it."""

    record: Image
    #: Bytes its tree holds on disk (blocks shared with other images' layers included).
    disk_bytes: int


class ImageService:
    def __init__(
        self,
        store: Store,
        images: ImageStore | None,
        sealer: Sealer,
        *,
        changed: Callable[[], None],
        plans: PlanService | None = None,
    ) -> None:
        """`changed` is told when an image is deleted (cached principals may hold it); `plans`
        caps an organization's custom images (None: no cap)."""
        self._store = store
        self._images = images
        self._sealer = sealer
        self._plans = plans
        self._changed = changed
        self._mounted = False

    # --- what runs ------------------------------------------------------------------------

    def runtime(self, image: Image | None) -> RootImage:
        """The sandbox's root for `image` (None: `host`)."""
        if image is None:
            return HOST_IMAGE
        if self._images is None:
            raise Unavailable("runtime images need btrfs (btrfs-progs) on this server")
        if not self._mounted:  # the storage filesystem holds the trees: mounted once per process
            self._images.mount()
            self._mounted = True
        self._images.use(image.id)  # its tree is not deleted while this process may run on it
        config = image.config
        return RootImage(
            name=image.name,
            digest=image.digest,
            root=str(self._images.root_of(image.id)),
            binaries=tuple(sorted(config.get("binaries", {}).items())),
            env=tuple(config.get("env", {}).items()),
        )

    async def find(self, org: Org | None, name: str) -> Image | None:
        """The image `name` as `org` sees it (its own, else a built-in one); None for `host`."""
        if name == HOST:
            return None
        image = await self._store.images.visible(org.id if org else None, name)
        if image is None:
            where = f"organization {org.name!r}" if org else "the built-in images"
            raise NotFound(f"no image {name!r} in {where} (`sandboxd images list`)")
        return image

    async def name_of(self, image_id: str | None) -> str:
        """A sandbox config's image as its listing names it."""
        if image_id is None:
            return HOST
        image = await self._store.images.get(image_id)
        return image.name if image is not None else "(deleted)"

    # --- adding ---------------------------------------------------------------------------

    async def import_path(self, org: Org | None, name: str, path: Path, progress: Progress) -> Image:
        """An OCI layout directory, an oci-archive or a `docker save` tarball."""
        source = skopeo.detect_source(path)

        def fill(layout: Path, tag: str) -> None:
            skopeo.copy(source, layout, tag, progress=progress, max_bytes=self._images_max_bytes())

        return await self._add(org, name, f"file {path}", fill, progress)

    async def pull(
        self,
        org: Org | None,
        name: str,
        ref: str,
        *,
        credentials: skopeo.Credentials | None,
        plain_http: bool,
        progress: Progress,
    ) -> Image:
        """From a registry; credentials given are kept (sealed) for the next pull from it."""
        registry = skopeo.registry_host(ref)
        owner = org.id if org else _NO_ORG
        given = credentials
        if credentials is None and (sealed := await self._store.registry_credentials.get(owner, registry)):
            credentials = self._unseal(owner, registry, sealed)

        def fill(layout: Path, tag: str) -> None:
            skopeo.copy(skopeo.Source("registry", ref), layout, tag, credentials=credentials,
                        plain_http=plain_http, progress=progress, max_bytes=self._images_max_bytes())

        image = await self._add(org, name, f"registry {ref}", fill, progress)
        if given is not None:
            # sealed with their owner and registry: a row copied elsewhere does not open
            plain = f"{owner}\n{registry}\n{given.username}:{given.password}".encode()
            await self._store.registry_credentials.put(owner, registry, self._sealer.seal(plain))
        return image

    def _unseal(self, owner: str, registry: str, sealed: bytes) -> skopeo.Credentials | None:
        opened = self._sealer.open(sealed)
        if opened is None:
            return None
        own, reg, text = (opened.decode(errors="replace").split("\n", 2) + ["", ""])[:3]
        if (own, reg) != (owner, registry):
            return None
        return skopeo.parse_credentials(text)

    async def build(
        self,
        org: Org | None,
        name: str,
        packages: Sequence[str],
        *,
        suite: str,
        mirror: str | None,
        progress: Progress,
    ) -> Image:
        """A Debian root filesystem of `packages` (mmdebstrap), imported as a one-layer image."""
        if not packages:
            raise ImageError("name at least one Debian package (--package)")

        def fill(layout: Path, tag: str) -> None:
            # Inside the store's layout, under its temp prefix: a killed build's root filesystem
            # is removed by the next images command (oci.prune), not left in /tmp.
            oci.ensure_layout(layout)
            with tempfile.TemporaryDirectory(prefix=oci.TEMP_PREFIX, dir=layout) as work:
                built = Path(work) / "layout"
                debian.build_layout(packages, built, "built", suite=suite, mirror=mirror, progress=progress)
                skopeo.copy(skopeo.Source("oci-dir", str(built), "built"), layout, tag, progress=progress)

        return await self._add(org, name, f"debian {suite}: {' '.join(packages)}", fill, progress)

    async def _add(
        self, org: Org | None, name: str, source: str, fill: Callable[[Path, str], None], progress: Progress
    ) -> Image:
        images = self._need_store()
        if not _NAME.fullmatch(name):
            raise ImageError(f"image name must be {NAME_RULE}")
        if name == HOST:
            raise Conflict("'host' is the built-in image of the host's /usr; choose another name")
        image_id = new_id("img")
        async with self._locked(images):
            await self._check_new(org, name)
            try:
                await asyncio.to_thread(fill, images.layout, image_id)
                found = await asyncio.to_thread(oci.read_image, images.layout, image_id)
                if found.architecture and found.architecture != (host := oci.host_architecture()):
                    raise ImageError(f"the image is built for {found.architecture}; this server runs {host}")
                unpacked = await asyncio.to_thread(images.unpack, found, image_id, progress)
                record = Image(
                    id=image_id,
                    org_id=org.id if org else None,
                    name=name,
                    digest=found.manifest_digest,
                    source=source[:1024],
                    config={
                        "env": found.env,
                        "path": found.path,
                        "binaries": unpacked.binaries,
                        "layers": list(unpacked.layers),
                        "blob_bytes": sum(layer.size for layer in found.layers),
                    },
                    size_bytes=unpacked.size_bytes,
                    created_at=utcnow(),
                )
                await self._store.images.add(record)
            except BaseException:
                await self._clean(images)  # this image's tag, root and new layers
                raise
        disk = await asyncio.to_thread(images.disk_bytes, image_id)
        progress(f"image {name!r} ready: {unpacked.size_bytes / 2**20:.1f} MiB of files, "
                 f"{disk / 2**20:.1f} MiB on disk (layers shared with other images included), "
                 f"languages: {', '.join(sorted(unpacked.binaries)) or 'none'}")
        return record

    async def _check_new(self, org: Org | None, name: str) -> None:
        taken = await self._store.images.visible(org.id if org else None, name)
        if taken is not None:
            where = "a built-in image" if taken.org_id is None else "an image of this organization"
            raise Conflict(f"{where} is already called {name!r}; delete it first or choose another name")
        if org is not None and self._plans is not None:
            check_image_count(await self._plans.plan_of(org), await self._store.images.count(org.id))

    # --- reading and deleting -------------------------------------------------------------

    async def list(self, org: Org | None) -> list[Image]:
        """An organization's images and the built-in ones (no organization: every image)."""
        await self.clean()
        return await self._store.images.list(org.id if org else None)

    async def show(self, org: Org | None, name: str) -> ImageInfo:
        image = await self.find(org, name)
        if image is None:
            raise ImageError("'host' is the host's own /usr: nothing stored")
        images = self._need_store()
        disk = await asyncio.to_thread(images.disk_bytes, image.id)
        return ImageInfo(image, disk)

    async def delete(self, org: Org | None, name: str) -> None:
        images = self._need_store()
        image = await self.find(org, name)
        if image is None:
            raise Conflict("'host' is built in and cannot be deleted")
        if (org is None) != (image.org_id is None):
            raise NotFound(f"no image {name!r} in " + (f"organization {org.name!r}" if org else "the built-in images"))
        async with self._locked(images):
            if not await self._store.images.delete_unused(image.id):
                users = await self._store.sandboxes.using_image(image.id)
                names = ", ".join(sorted(s.name for s in users))
                raise Conflict(f"image {name!r} is used by sandbox configs: {names}; give them another image first")
            self._changed()
            await self._clean(images)  # a root a live server still runs on stays until it is free

    async def clean(self) -> None:
        """Remove what an interrupted command left (a server calls it at start): unless an
        images command is at work right now (a server does not wait for a long pull)."""
        if self._images is not None and self._images.used:
            await self._clean_if_idle(self._images)

    # --- helpers --------------------------------------------------------------------------

    def _images_max_bytes(self) -> int:
        """What a copy may write: the unpacked limit (compressed layers are smaller)."""
        return self._need_store().limits.max_bytes

    def _need_store(self) -> ImageStore:
        if self._images is None:
            raise Unavailable("runtime images need btrfs (btrfs-progs) on this server")
        return self._images

    def _locked(self, images: ImageStore) -> _Locked:
        return _Locked(images)

    async def _clean(self, images: ImageStore) -> None:
        known = {i.id: tuple(i.config.get("layers", ())) for i in await self._store.images.list(None)}
        await asyncio.to_thread(images.clean, known)

    async def _clean_if_idle(self, images: ImageStore) -> None:
        if (held := await asyncio.to_thread(images.try_lock)) is not None:
            try:
                await self._clean(images)
            finally:
                held.release()


class _Locked:
    """`async with`: the image store's lock, taken in a worker thread (it may wait)."""

    def __init__(self, images: ImageStore) -> None:
        self._images = images
        self._held: StoreLock | None = None

    async def __aenter__(self) -> None:
        self._held = await asyncio.to_thread(self._images.lock)

    async def __aexit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.release()

