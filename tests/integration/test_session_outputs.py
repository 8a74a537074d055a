"""Rich outputs of a persistent python session, on a Debian image with pandas, matplotlib and
Pillow (the `datascience` recipe's packages): a DataFrame built in one call and plotted in the
next comes back as a PNG in `outputs`, as a notebook would show it.

Real server, real sandboxes, the image built with mmdebstrap once per test session.
"""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any

import baponi
import httpx
import pytest
from _datascience import datascience_image_layout
from _registry import LayoutImage
from _servers import EXECUTE, HTTP_TIMEOUT, Pool, pool
from conftest import Server

__all__ = ["datascience_image_layout", "pool"]  # fixtures, imported so pytest finds them here


@pytest.fixture(scope="module")
def server(pool: Pool, datascience_image_layout: LayoutImage) -> Server:
    server = pool.start(auth_failures_allowed=100_000)
    imported = server.cli("images", "import", str(datascience_image_layout.layout), "--name", "datascience", timeout=900)
    assert imported.returncode == 0, imported.stderr
    created = server.cli("sandboxes", "create", "analysts", "--image", "datascience", "--session", "persistent",
                         "--memory", "1024")
    assert created.returncode == 0, created.stderr
    return server


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    made = server.cli("keys", "create", "--sandbox", "analysts")
    assert made.returncode == 0, made.stderr
    return made.stdout.split()[0]


def run(server: Server, key: str, code: str, thread_id: str) -> dict[str, Any]:
    response = httpx.post(
        server.url + EXECUTE, json={"code": code, "thread_id": thread_id, "timeout": 60},
        headers={"Authorization": f"Bearer {key}"}, timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["success"], result
    return result


def png_size(item: dict[str, Any]) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the bytes must be a PNG)."""
    assert item["type"] == "image/png" and not item.get("truncated"), item
    data = base64.b64decode(item["data"], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_dataframe_then_plot_in_the_next_call(server: Server, key: str) -> None:
    t = f"ds-{uuid.uuid4().hex[:10]}"
    built = run(server, key, "import pandas as pd\ndf = pd.DataFrame({'x': range(10), 'y': [i * i for i in range(10)]})", t)
    assert built["outputs"] == []
    shown = run(server, key, "df.head(3)", t)
    assert shown["session"] == {"state": "kept", "reason": None}
    html = [o for o in shown["outputs"] if o["type"] == "text/html"]
    assert len(html) == 1 and "<table" in html[0]["data"], shown["outputs"]
    assert " x  y" in shown["stdout"] or "x  y" in shown["stdout"], shown["stdout"]  # the text repr too
    plotted = run(
        server, key,
        "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(4, 3), dpi=100)\nplt.plot(df.x, df.y)\nNone", t,
    )
    pngs = [o for o in plotted["outputs"] if o["type"] == "image/png"]
    assert len(pngs) == 1, plotted["outputs"]  # left open at the end: shown once, then closed
    assert png_size(pngs[0]) == (400, 300)
    shown_fig = run(server, key, "plt.figure(figsize=(2, 2), dpi=50)\nplt.bar(['a', 'b'], [1, 2])\nplt.show()", t)
    assert [png_size(o) for o in shown_fig["outputs"] if o["type"] == "image/png"] == [(100, 100)]
    assert "non-interactive" not in shown_fig["stderr"], shown_fig["stderr"]
    after = run(server, key, "print(len(plt.get_fignums()))", t)
    assert after["stdout"] == "0\n" and after["outputs"] == []


def test_pil_image_and_markdown_reprs(server: Server, key: str) -> None:
    t = f"ds-{uuid.uuid4().hex[:10]}"
    image = run(server, key, "from PIL import Image\nImage.new('RGB', (32, 16), 'red')", t)
    assert [png_size(o) for o in image["outputs"]] == [(32, 16)]
    md = run(server, key, "class Note:\n    def _repr_markdown_(self):\n        return '# hi'\nNote()", t)
    assert [(o["type"], o["data"], o["truncated"]) for o in md["outputs"]] == [("text/markdown", "# hi", False)]


def test_the_official_sdk_reads_results_with_outputs(server: Server, key: str) -> None:
    t = f"ds-{uuid.uuid4().hex[:10]}"
    with baponi.Baponi(api_key=key, base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        client.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2])", thread_id=t)
        result = client.execute("print(len(plt.get_fignums()))", thread_id=t)
    assert result.success and result.stdout == "0\n"
