"""Section 10 of the suite: persistent sessions, on the "pools on" server.

- `print(1)` in a thread's live session (second and later executions) vs a stateless inline
  run (pooled, no thread), interleaved, each sample `PAUSE_S` after the one before (as an
  agent's calls come): the ratio of medians (the target: at most 0.5);
- `import numpy` in a live session that imported it before vs in a stateless run, interleaved,
  on the pandas image below (the host's python has no numpy);
- a 20-step pandas workflow on a Debian image with python3-pandas (built once with
  mmdebstrap, not timed): a 10 MB CSV loaded once, then 19 small steps, in one session vs as
  20 stateless runs on a thread (each loads the CSV again); total wall time of the 20 steps.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import BenchServer, Series
from _images import _cli
from _runs import server_runner

from sandboxd.images import debian

PACKAGES = ("python3-minimal", "python3-pandas")
#: Between two samples, as between an agent's calls (its model's turn): the pool's refill after
#: a stateless sample must not land on the next sample, whichever series it belongs to.
PAUSE_S = 0.05
_MAKE_CSV = """\
import random
random.seed(7)
with open('/home/baponi/data.csv', 'w') as f:
    f.write('k,a,b,c,d\\n')
    for i in range(240_000):
        f.write(f"{i % 50},{random.random():.6f},{random.random():.6f},{random.randint(0, 999)},{random.random():.6f}\\n")
import os
print(os.path.getsize('/home/baponi/data.csv') // 1_000_000)
"""
_LOAD = "import pandas as pd\ndf = pd.read_csv('/home/baponi/data.csv')\n"
#: The 19 small steps after the load (each prints something small).
_STEPS = [
    "print(df.shape)",
    "print(round(df.a.mean(), 3))",
    "print(df.groupby('k').a.mean().round(3).head(3).to_dict())",
    "print(int((df.b > 0.5).sum()) > 0)",
    "print(df.sort_values('c').head(2).k.tolist())",
    "df['e'] = df.a * df.b\nprint(round(df.e.max(), 3))",
    "print(df.describe().loc['mean'].round(2).to_dict()['c'] > 0)",
    "print(df[df.k == 3].shape[0])",
    "print(df.c.value_counts().head(1).index[0] >= 0)",
    "print(round(df[['a', 'b']].corr().iloc[0, 1], 1) < 1)",
    "print(df.pivot_table(index='k', values='d', aggfunc='mean').shape)",
    "print(df.nlargest(3, 'd').k.tolist().__len__())",
    "print(round(df.a.quantile(0.9), 1))",
    "print(df.assign(f=df.c // 100).f.nunique())",
    "print(df.k.unique().size)",
    "print(round(df.b.std(), 2))",
    "print(df.head(1000).to_csv().count(chr(10)))",
    "print(df.isna().sum().sum())",
    "print(len(df.columns))",
]


@dataclass
class SessionFigures:
    stateless: Series
    session: Series
    numpy_stateless: Series
    numpy_session: Series
    workflow_stateless_s: list[float]
    workflow_session_s: list[float]

    @property
    def ratio(self) -> float:
        return self.session.median() / self.stateless.median()

    @property
    def workflow_ratio(self) -> float:
        return _median(self.workflow_session_s) / _median(self.workflow_stateless_s)


def _pause() -> float:
    time.sleep(PAUSE_S)
    return 0.0


def _paced(
    sample: Callable[[dict[str, Callable[[], float]]], dict[str, Series]], runners: dict[str, Callable[[], float]]
) -> dict[str, Series]:
    """`sample` (interleaved rounds) with a pause after each runner, left out of the figures."""
    paced: dict[str, Callable[[], float]] = {}
    for label, run in runners.items():
        paced[label] = run
        paced[f"pause after {label}"] = _pause
    return {label: got for label, got in sample(paced).items() if label in runners}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _post(client: httpx.Client, code: str, thread_id: str) -> dict[str, object]:
    r = client.post("/v1/sandbox/execute", json={"code": code, "thread_id": thread_id, "timeout": 60})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
    out: dict[str, object] = r.json()
    if not out["success"]:
        raise RuntimeError(f"unexpected result {out}")
    return out


def _workflow(client: httpx.Client, thread_id: str, *, session: bool) -> float:
    """The 20 steps' wall time (the CSV is made first, not timed)."""
    _post(client, _MAKE_CSV, thread_id)
    t0 = time.perf_counter()
    _post(client, _LOAD + ("print('loaded')" if session else _STEPS[0]), thread_id)
    for step in _STEPS[int(not session):]:
        _post(client, step if session else _LOAD + step, thread_id)
    return time.perf_counter() - t0


def measure(
    server: BenchServer, host_client: httpx.Client,
    sample: Callable[[dict[str, Callable[[], float]]], dict[str, Series]], *, workflow_rounds: int,
) -> SessionFigures:
    _cli(server, "sandboxes", "create", "bench-session", "--session", "persistent")
    key = _cli(server, "keys", "create", "--sandbox", "bench-session", "--name", "bench-session").strip()
    work = Path(tempfile.mkdtemp(prefix="sandboxd-bench-session-"))
    try:
        with server.client(key, timeout_s=120) as session_client:
            thread = f"bench-session-{uuid.uuid4().hex[:8]}"
            _post(session_client, "print(1)", thread)  # starts the session
            got = _paced(sample, {
                "stateless": server_runner(host_client, "python", "print(1)", "1\n"),
                "session": server_runner(session_client, "python", "print(1)", "1\n", thread),
            })
            layout = work / "layout"
            debian.build_layout(PACKAGES, layout, "bench", suite="bookworm", mirror=None, progress=lambda _: None)
            _cli(server, "images", "import", f"{layout}", "--name", "bench-pandas")
            _cli(server, "sandboxes", "create", "bench-pandas-session", "--session", "persistent", "--image", "bench-pandas")
            _cli(server, "sandboxes", "create", "bench-pandas", "--image", "bench-pandas")
            keys = {
                mode: _cli(server, "keys", "create", "--sandbox", sandbox, "--name", sandbox).strip()
                for mode, sandbox in (("session", "bench-pandas-session"), ("stateless", "bench-pandas"))
            }
            times: dict[str, list[float]] = {"session": [], "stateless": []}
            with server.client(keys["session"], timeout_s=120) as s_client, server.client(keys["stateless"], timeout_s=120) as t_client:
                numpy_thread = f"bench-numpy-{uuid.uuid4().hex[:8]}"
                _post(s_client, "import numpy", numpy_thread)  # imported once in the session
                got |= _paced(sample, {
                    "numpy stateless": server_runner(t_client, "python", "import numpy", ""),
                    "numpy session": server_runner(s_client, "python", "import numpy", "", numpy_thread),
                })
                for _ in range(workflow_rounds):
                    times["stateless"].append(_workflow(t_client, f"wf-{uuid.uuid4().hex[:8]}", session=False))
                    times["session"].append(_workflow(s_client, f"wf-{uuid.uuid4().hex[:8]}", session=True))
        return SessionFigures(
            got["stateless"], got["session"], got["numpy stateless"], got["numpy session"],
            times["stateless"], times["session"],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
