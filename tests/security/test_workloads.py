"""The seccomp allowlist must not break real work: everyday Python, Node, Bash, pip and npm.

These are the workloads the allowlist was derived from (`strace -f -c` on the host, see
runtime/seccomp.py); each runs in a real sandbox and must succeed. A syscall missing from the
allowlist shows up here as a failure (ENOSYS where the program needed the call) or as status
`seccomp` (a call in the kill list).
"""

from __future__ import annotations

import pytest

from sandboxd.runtime import ExecStatus

PYTHON = """
import asyncio, concurrent.futures, ctypes, fcntl, hashlib, json, locale, mmap, multiprocessing
import os, platform, pty, resource, select, shutil, signal, socket, sqlite3, ssl, subprocess
import sys, tarfile, tempfile, threading, time, uuid, zipfile


def square(x):
    return x * x


async def loopback():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    server.close()
    child = await asyncio.create_subprocess_exec("true")
    assert await child.wait() == 0


if __name__ == "__main__":
    asyncio.run(loopback())
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(square, range(10))[3] == 9
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        assert sum(ex.map(square, range(10))) == 285
    queue = multiprocessing.Queue(); queue.put(1); assert queue.get() == 1
    assert subprocess.run("echo hi | wc -c", shell=True, capture_output=True, text=True).stdout.strip() == "3"
    ssl.create_default_context().load_default_certs()
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "x.db"))
        db.execute("create table t(x)"); db.execute("insert into t values (1)"); db.commit(); db.close()
        path = os.path.join(d, "f")
        with open(path, "w") as f:
            f.write("x" * 10000)
        os.chmod(path, 0o600); shutil.copy(path, path + ".copy"); os.symlink(path, path + ".link")
        os.link(path, path + ".hard"); os.utime(path); os.statvfs(d); os.truncate(path, 10)
        os.mkfifo(os.path.join(d, "fifo"))
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ).close()
        with tarfile.open(os.path.join(d, "a.tgz"), "w:gz") as t:
            t.add(path)
        shutil.make_archive(os.path.join(d, "z"), "zip", d)
    a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.sendto(b"x", ("::1", 9))
    socket.getaddrinfo("localhost", 80)
    select.epoll().close(); select.select([], [], [], 0); select.poll()
    signal.signal(signal.SIGUSR1, lambda *a: None); os.kill(os.getpid(), signal.SIGUSR1)
    signal.setitimer(signal.ITIMER_REAL, 0)
    os.urandom(16); uuid.uuid4(); uuid.uuid1(); hashlib.sha256(b"x").hexdigest()
    assert os.cpu_count() and os.sched_getaffinity(0) and os.getloadavg()
    platform.platform(); locale.setlocale(locale.LC_ALL, ""); resource.getrusage(resource.RUSAGE_SELF)
    os.nice(1); os.pipe2(os.O_CLOEXEC); os.eventfd(0); os.memfd_create("x"); os.pidfd_open(os.getpid())
    pid, fd = pty.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    t = threading.Thread(target=time.sleep, args=(0.01,)); t.start(); t.join()
    print("python ok")
"""

NODE = """
const fs = require('fs'), cp = require('child_process'), os = require('os');
const crypto = require('crypto'), http = require('http'), path = require('path'), zlib = require('zlib');
const { Worker } = require('worker_threads');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'n-'));
fs.writeFileSync(path.join(dir, 'a'), 'x'.repeat(10000));
fs.renameSync(path.join(dir, 'a'), path.join(dir, 'b'));
fs.symlinkSync(path.join(dir, 'b'), path.join(dir, 'c'));
fs.copyFileSync(path.join(dir, 'c'), path.join(dir, 'd'));
fs.watch(dir).close();
if (cp.execSync('echo hi | wc -c').toString().trim() !== '3') throw new Error('pipe');
crypto.generateKeyPairSync('ec', {namedCurve: 'P-256'}); crypto.scryptSync('a', 'b', 16);
zlib.gzipSync('x'.repeat(1000)); os.cpus(); os.totalmem(); os.userInfo(); os.loadavg();
(async () => {
  await fs.promises.writeFile(path.join(dir, 'p'), 'y');
  const w = new Worker('require("worker_threads").parentPort.postMessage(42)', {eval: true});
  if (await new Promise(r => w.on('message', r)) !== 42) throw new Error('worker');
  await new Promise(r => crypto.pbkdf2('a', 'b', 1000, 32, 'sha256', r));
  const srv = http.createServer((q, s) => s.end('ok'));
  await new Promise(r => srv.listen(0, '127.0.0.1', r));
  const body = await new Promise((r, j) => http.get({host: '127.0.0.1', port: srv.address().port},
    res => { let b = ''; res.on('data', d => b += d); res.on('end', () => r(b)); }).on('error', j));
  srv.close();
  fs.rmSync(dir, {recursive: true});
  console.log(body === 'ok' ? 'node ok' : 'bad body');
})();
"""

BASH = """
set -euo pipefail
d=$(mktemp -d); cd "$d"
echo hello | tr a-z A-Z | sed 's/H/J/' | awk '{print $1}' | grep -q JELLO
( echo sub >/dev/null; exit 0 ); { echo grp; } > f
seq 1 1000 > n; sort -n n | uniq | head -3 | tail -1 >/dev/null; cut -c1 n | wc -l >/dev/null
mkdir -p a/b; touch a/b/c; find . -name c -type f | xargs -r ls -l >/dev/null
tar czf t.tgz a; tar xzf t.tgz -C a; gzip -k n; gunzip -c n.gz | sha256sum >/dev/null
cp n m; mv m o; ln -s o p; readlink p >/dev/null; chmod 600 o; stat o >/dev/null; df -h . >/dev/null
date >/dev/null; sleep 0.01; id >/dev/null; uname -a >/dev/null; ps aux >/dev/null
for i in 1 2 3; do echo $i >/dev/null & done; wait
mkfifo ff; (echo fifo > ff &); cat ff >/dev/null
printf '%s\\n' a b | diff - <(printf '%s\\n' a b)
timeout 5 true; nohup true >/dev/null 2>&1; nice true; flock f true
cd /; rm -rf "$d"
echo bash ok
"""

PACKAGING = """
set -euo pipefail
cd /data
python3 -m pip --version >/dev/null
python3 -m pip list >/dev/null
python3 -m venv venv
venv/bin/pip --version >/dev/null
venv/bin/python -c 'import pip, sys; assert sys.prefix.endswith("venv")'
npm --version >/dev/null
mkdir project && cd project && npm init -y >/dev/null
node -e 'if (require("./package.json").name !== "project") process.exit(1)'
echo packaging ok
"""

WORKLOADS = {
    "python": ("python", PYTHON, "python ok"),
    "node": ("node", NODE, "node ok"),
    "bash": ("bash", BASH, "bash ok"),
    "pip_venv_npm": ("bash", PACKAGING, "packaging ok"),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
async def test_everyday_workload_runs_under_the_allowlist(run, workload: str) -> None:
    language, code, done = WORKLOADS[workload]
    result = await run(code, language, timeout_s=90)
    assert result.status is ExecStatus.SUCCESS, result
    assert result.stdout.decode().strip().endswith(done), result
