// sandboxd session driver for Node.js: the program of a persistent sandbox (runtime/drivers).
//
// Runs each request's code as a REPL entry in one context (`vm.Script#runInThisContext`): its
// top-level var/let/const/function/class persist for the next ones. `require` (resolving from
// the working directory), `module`, `__filename` and `__dirname` are globals, set again before
// each cell from the working directory of that moment (unless the code assigned them).
//
// A cell that uses top-level `await` (it fails to parse as a script and contains "await") runs
// wrapped in an async function: its declarations are local to that cell and do not persist;
// assign to a global (`globalThis.x = ...`, or `x = ...` without a declaration) to keep a value.
//
// A cell is over when its completion value has settled (a promise is awaited) and the async
// work it started has drained: the resources of process.getActiveResourcesInfo() are back to
// what they were before it (as a stateless `node main.js` waits for its event loop). An uncaught
// exception or an unhandled rejection meanwhile is printed on stderr and makes the exit status
// 1; `process.exit(n)` ends the cell at once with status n (the process goes on); a cell that
// leaves `process.exitCode` set ends with it. The last value is not displayed.
//
// Runs inside the sandbox with the code's privileges, on the image's node.
'use strict';

(function sandboxdSession() {
  const fs = require('fs');
  const path = require('path');
  const util = require('util');
  const vm = require('vm');
  const Module = require('module');

  const CONTROL_FD = parseInt('__SANDBOXD_CONTROL_FD__', 10);
  const NONCE = '__SANDBOXD_NONCE__';
  const END = Buffer.from('\x1esandboxd-end-' + NONCE + '\x1e', 'latin1');
  const DRIVER = __filename;

  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  function writeAll(fd, data) {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(String(data));
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off, buf.length - off);
      } catch (err) {
        if (err.code !== 'EAGAIN') throw err;
        Atomics.wait(sleeper, 0, 0, 1); // a non-blocking pipe is full: wait for the reader
      }
    }
  }

  // The requests and the control pipe move to descriptors of our own, opened again through
  // /proc (node has no dup()): node opens them close-on-exec, so the code's subprocesses do not
  // inherit them. fd 0 becomes /dev/null: reading stdin gets EOF, never the protocol.
  let requests;
  let control;
  try {
    requests = fs.openSync('/proc/self/fd/0', fs.constants.O_RDONLY);
    control = fs.openSync('/proc/self/fd/' + CONTROL_FD, fs.constants.O_WRONLY);
  } catch (err) {
    writeAll(2, 'sandboxd: the session driver cannot reopen its pipes: ' + err.message + '\n');
    process.exit(70);
  }
  fs.closeSync(CONTROL_FD);
  fs.closeSync(0);
  if (fs.openSync('/dev/null', fs.constants.O_RDONLY) !== 0) {
    writeAll(2, 'sandboxd: the session driver cannot put /dev/null on stdin\n');
    process.exit(70);
  }
  // created now, so that the streams' handles are in every cell's baseline
  const stdout = process.stdout;
  const stderr = process.stderr;

  // --- process.exit ends the cell -----------------------------------------------------
  const realExit = process.exit;
  function ExitSignal(code) {
    this.code = code;
  }
  process.exit = function exit(code) {
    if (code === undefined || code === null) code = process.exitCode;
    throw new ExitSignal((Number(code) || 0) & 0xff);
  };

  let current = null; // the cell running: { errored, finish(status) }

  function printError(err) {
    let text;
    if (err instanceof Error) {
      text = util.inspect(err)
        .split('\n')
        .filter((line) => !/^\s+at /.test(line) ||
          (line.indexOf(DRIVER + ':') < 0 && line.indexOf('node:vm:') < 0))
        .join('\n');
    } else {
      text = 'Uncaught ' + util.inspect(err);
    }
    try {
      writeAll(2, text + '\n');
    } catch (_) {
      // stderr is gone: nothing to tell
    }
  }

  function failed(err) {
    if (err instanceof ExitSignal) {
      if (current) current.finish(err.code);
      return;
    }
    printError(err);
    if (current) current.errored = true;
  }
  process.on('uncaughtException', failed);
  process.on('unhandledRejection', failed);

  // --- what keeps a cell going ----------------------------------------------------------
  function resources() {
    const counts = new Map();
    const add = (type) => counts.set(type, (counts.get(type) || 0) + 1);
    if (typeof process.getActiveResourcesInfo === 'function') {
      process.getActiveResourcesInfo().forEach(add);
    } else { // before node 17
      process._getActiveHandles().forEach(() => add('handle'));
      process._getActiveRequests().forEach(() => add('request'));
    }
    return counts;
  }

  function drained(baseline, ownTimer) {
    const now = resources();
    if (ownTimer && now.get('Timeout')) now.set('Timeout', now.get('Timeout') - 1);
    for (const [type, count] of now) {
      if (count > (baseline.get(type) || 0)) return false;
    }
    return true;
  }

  // --- cells ------------------------------------------------------------------------------
  const ours = {};
  function setGlobals(filename) {
    const cwd = process.cwd();
    const file = path.join(cwd, filename);
    const mod = new Module(file, null);
    mod.filename = file;
    mod.paths = Module._nodeModulePaths(cwd);
    mod.loaded = true;
    const values = {
      require: Module.createRequire(file),
      module: mod,
      __filename: file,
      __dirname: cwd,
    };
    for (const name of Object.keys(values)) {
      if (!(name in ours) || globalThis[name] === ours[name]) {
        globalThis[name] = ours[name] = values[name];
      }
    }
  }

  // import() in a cell: node's own loader, resolving from the working directory (node >=
  // 20.12; before, import() in a cell fails). Node calls it experimental and would say so on
  // the first cell that imports: that warning is about the driver, not the code, and is not
  // printed.
  const DYNAMIC_IMPORT = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
  if (DYNAMIC_IMPORT) {
    const emitWarning = process.emitWarning;
    process.emitWarning = function (warning) {
      const text = String(warning && warning.message !== undefined ? warning.message : warning);
      if (text.indexOf('USE_MAIN_CONTEXT_DEFAULT_LOADER') >= 0) return undefined;
      return emitWarning.apply(this, arguments);
    };
  }

  function compile(source, filename) {
    const options = { filename };
    if (DYNAMIC_IMPORT) options.importModuleDynamically = DYNAMIC_IMPORT;
    try {
      return { script: new vm.Script(source, options), wrapped: false };
    } catch (err) {
      if (!(err instanceof SyntaxError) || !/\bawait\b/.test(source)) throw err;
      try {
        const script = new vm.Script('(async () => {\n' + source + '\n})()',
          Object.assign({ lineOffset: -1 }, options));
        return { script, wrapped: true };
      } catch (_) {
        throw err; // the error of the code as written
      }
    }
  }

  let cells = 0;
  function runCell(source) {
    let resolve;
    const over = new Promise((r) => {
      resolve = r;
    });
    // the cell runs here, not in the promise's executor: no frame of it in its stack traces
    cells += 1;
    const filename = '<cell ' + cells + '>';
    let done = false;
    const cell = { errored: false };
    cell.finish = (status) => {
      if (done) return;
      done = true;
      current = null;
      resolve(status);
    };
    current = cell;
    setGlobals(filename);
    const baseline = resources();
    let completion;
    let wrapped = false;
    try {
      const compiled = compile(source, filename);
      wrapped = compiled.wrapped;
      completion = compiled.script.runInThisContext({ displayErrors: true });
    } catch (err) {
      failed(err);
    }
    if (done) return over;
    let settled = true;
    if (util.types.isPromise(completion)) {
      settled = false;
      completion.then(() => {
        settled = true;
      }, (err) => {
        settled = true;
        failed(err);
      });
    }
    let delay = 1;
    const check = (ownTimer) => {
      if (done) return;
      if (!drained(baseline, ownTimer)) {
        delay = Math.min(delay * 2, 20);
        setTimeout(() => check(true), delay);
        return;
      }
      // Nothing of the cell is left that could settle its completion: as node ends a module
      // whose top-level await can never settle (status 13); a promise that is only the last
      // value is not waited for, as a script's is not.
      let status = cell.errored ? 1 : 0;
      if (!settled && wrapped && !status) {
        writeAll(2, 'Warning: Detected unsettled top-level await\n');
        status = 13;
      }
      if (!status && process.exitCode) status = Number(process.exitCode) & 0xff;
      cell.finish(status);
    };
    setImmediate(() => check(false)); // after the microtasks and ticks the cell queued
    return over;
  }

  function flushed(stream) {
    return new Promise((resolve) => {
      try {
        if (!stream.writableLength) return resolve();
        stream.write('', () => resolve());
      } catch (_) {
        resolve();
      }
    });
  }

  function readExactly(n) {
    const buf = Buffer.alloc(n);
    let got = 0;
    return new Promise((resolve, reject) => {
      const step = () => {
        if (got === n) return resolve(buf);
        fs.read(requests, buf, got, n - got, null, (err, count) => {
          if (err) {
            if (err.code === 'EAGAIN') return setTimeout(step, 1);
            return reject(err);
          }
          if (count === 0) return resolve(null);
          got += count;
          step();
        });
      };
      step();
    });
  }

  async function serve() {
    writeAll(control, '{"ready": true}\n');
    for (;;) {
      const head = await readExactly(20);
      if (head === null) break;
      const env = await readExactly(parseInt(head.toString('latin1', 0, 10), 10));
      const code = env && await readExactly(parseInt(head.toString('latin1', 10, 20), 10));
      if (code === null) break;
      for (const item of env.toString().split('\0')) {
        const i = item.indexOf('=');
        if (i > 0) process.env[item.slice(0, i)] = item.slice(i + 1);
      }
      // start from a callback of our own that is over: nothing of the driver in the baseline
      await new Promise((resolve) => setImmediate(resolve));
      const status = await runCell(code.toString());
      process.exitCode = undefined;
      await Promise.all([flushed(stdout), flushed(stderr)]);
      writeAll(1, END);
      writeAll(2, END);
      writeAll(control, JSON.stringify({ exit: status, outputs: [] }) + '\n');
    }
    realExit.call(process, 0);
  }

  serve().catch((err) => {
    writeAll(2, 'sandboxd: the session driver failed: ' + util.inspect(err) + '\n');
    realExit.call(process, 70);
  });
})();
