// Real servers for the switchboard.js tests under Node: gunicorn (the README's command, on a
// free port) and redis-server, started and stopped by the tests themselves, plus the small
// things every test needs (a JWT signed with the server's key, waiting for a condition).
//
// Python comes from SWITCHBOARD_PYTHON (tests/e2e/test_js_client.py passes its own), else
// the checkout's .venv. SWITCHBOARD_TEST_TIME_SCALE stretches every bound, as in the Python suite.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { Switchboard } from "../../../static/js/switchboard.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const SCALE = Number(process.env.SWITCHBOARD_TEST_TIME_SCALE || "1");
const PYTHON = process.env.SWITCHBOARD_PYTHON || path.join(ROOT, ".venv", "bin", "python");

export const scaled = (ms) => ms * SCALE;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Wait until predicate() is truthy (it may be async); fail after `ms` (scaled). */
export async function waitFor(predicate, ms = 10000, what = "condition") {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${scaled(ms)} ms waiting for ${what}`);
    await sleep(20);
  }
}

export class Gunicorn {
  constructor(env = {}, port = null) {
    this.env = env;
    this.port = port;
    this.dir = mkdtempSync(path.join(tmpdir(), "sb-js-"));
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    if (!this.port) this.port = await freePort();
    this.logPath = path.join(this.dir, `gunicorn-${this.port}.log`);
    const log = openSync(this.logPath, "a");
    this.proc = spawn(PYTHON, ["-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], {
      cwd: ROOT, stdio: ["ignore", log, log], detached: true,
      env: { ...process.env, PORT: String(this.port), SWITCHBOARD_LOG_LEVEL: "WARNING", PYTHONUNBUFFERED: "1",
        SWITCHBOARD_TICKS: "0", ...this.env },
    });
    this.exited = new Promise((resolve) => this.proc.once("exit", resolve));
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`gunicorn exited:\n${this.log()}`);
      try {
        return (await fetch(`${this.url}/healthz`)).ok;
      } catch (err) {
        return false;
      }
    }, 30000, `gunicorn on ${this.url}`);
    return this;
  }

  log() {
    try {
      return readFileSync(this.logPath, "utf8").slice(-6000);
    } catch (err) {
      return "";
    }
  }

  /** SIGTERM (graceful: /ws gets 1001, streams end) and wait; SIGKILL the group if it lingers. */
  async stop(signal = "SIGTERM") {
    if (!this.proc || this.proc.exitCode !== null) return;
    process.kill(-this.proc.pid, signal);
    const timeout = sleep(scaled(15000)).then(() => "late");
    if ((await Promise.race([this.exited, timeout])) === "late") {
      process.kill(-this.proc.pid, "SIGKILL");
      await this.exited;
    }
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export class RedisServer {
  constructor() {
    this.dir = mkdtempSync(path.join(tmpdir(), "sb-js-redis-"));
  }

  get url() { return `redis://127.0.0.1:${this.port}/0`; }

  async start() {
    const binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find((p) => existsSync(p)) || "redis-server";
    if (!this.port) this.port = await freePort();
    this.proc = spawn(binary, ["--port", String(this.port), "--bind", "127.0.0.1", "--dir", this.dir, "--save", "",
      "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log", "--protected-mode", "no"],
    { stdio: "ignore", detached: true });
    this.exited = new Promise((resolve) => this.proc.once("exit", resolve));
    await waitFor(() => new Promise((resolve) => {
      import("node:net").then(({ connect }) => {
        const socket = connect(this.port, "127.0.0.1");
        socket.once("connect", () => { socket.end(); resolve(true); });
        socket.once("error", () => resolve(false));
      });
    }), 10000, "redis-server");
    return this;
  }

  async close() {
    if (this.proc && this.proc.exitCode === null) {
      process.kill(-this.proc.pid, "SIGTERM");
      await this.exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** An HS256 JWT, as an application would mint it with the server's key. */
export function mint(secret, claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** A token for `sub` that lives `seconds`, with these topic patterns. */
export function token(secret, sub, { seconds = 300, subscribe = ["**"], publish = ["**"] } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return mint(secret, { sub, iat: now, exp: now + seconds, switchboard: { subscribe, publish } });
}

/** POST an event straight to the server (a third party); returns the stored event. */
export async function publish(baseUrl, topic, data, headers = {}) {
  const res = await fetch(`${baseUrl}/api/topics/${topic}/events`, {
    method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: JSON.stringify({ data }),
  });
  if (res.status !== 201) throw new Error(`publish: ${res.status} ${await res.text()}`);
  return res.json();
}

const open = new Set();

/** A Switchboard for Node (ws as its WebSocket), whose errors and states are recorded.
 *  closeClients() (each file's afterEach) closes it, even when its test failed. */
export function client(url, options = {}) {
  const sb = new Switchboard(url, { WebSocket, ...options });
  open.add(sb);
  sb.errors = [];
  sb.states = [];
  sb.on("error", (err) => sb.errors.push(err));
  sb.on("state", (detail) => sb.states.push(detail));
  return sb;
}

export function closeClients() {
  for (const sb of open) sb.close();
  open.clear();
}

/** Subscribe and keep what arrives: {sub, events, gaps, errors}. */
export function follow(sb, topic, options = {}) {
  const got = { events: [], gaps: [], errors: [], states: [] };
  got.sub = sb.subscribe(topic, {
    ...options,
    onEvent: (event, info) => got.events.push({ ...event, info }),
    onGap: (gap) => got.gaps.push({ ...gap, after: got.events.length }),
    onError: (err) => got.errors.push(err),
    onState: (state) => got.states.push(state.state),
  });
  return got;
}

export const ids = (events) => events.map((event) => event.id);
export const texts = (events) => events.filter((e) => e.type !== "presence").map((event) => event.data && event.data.text);

/** The transports to run a test on: one at a time, forced. */
export const TRANSPORTS = ["websocket", "sse", "long-polling", "polling"];
