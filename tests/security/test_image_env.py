"""An image's environment cannot become bubblewrap options (the defence behind the import check).

Image configs are checked when imported (images/oci.py refuses control characters in `Env`);
this is the second layer: whatever reaches the runtime, an option holding a NUL byte (which
would split into options of its own in bubblewrap's NUL-separated `--args`) is refused before
anything starts.
"""

from __future__ import annotations

import pytest

from sandboxd.errors import SandboxSetupError
from sandboxd.runtime import BwrapRunner, Limits, RootImage, SandboxSpec

from .hostprobe import TEST_TIMEOUT_S, Host


@pytest.mark.parametrize("where", ["image env", "request env"])
async def test_a_nul_in_an_option_is_refused_before_anything_starts(
    runner: BwrapRunner, host: Host, escape_image: RootImage, where: str
) -> None:
    injected = "y\0--ro-bind\0/\0/hostroot\0--share-net"
    image = escape_image
    env = {}
    if where == "image env":
        image = RootImage(image.name, image.digest, image.root, image.binaries, (*image.env, ("X", injected)))
    else:
        env = {"X": injected}
    spec = SandboxSpec("bash", b"ls /hostroot; cat /proc/net/dev", Limits(timeout_s=TEST_TIMEOUT_S), env, image=image)
    with pytest.raises(SandboxSetupError, match="NUL byte"):
        await runner.run(spec)
    await host.assert_no_processes()
