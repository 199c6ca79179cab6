// switchboard.js's SSE transport read with EventSource (`eventSource: true`), as the SSE demo
// page uses it, under Node with the `eventsource` package (a WHATWG EventSource) against a
// real gunicorn: history then live events of the listed types; a drop resumed with
// ?last_event_id; a cut connection resumed by EventSource's own reconnect (Last-Event-ID),
// nothing lost or doubled; fetch() still reads the stream when a token must be sent; a
// refusal surfaces as a typed error with the server's code (asked with fetch, since
// EventSource shows no status).
import assert from "node:assert/strict";
import { createServer, connect } from "node:net";
import { after, afterEach, before, describe, test } from "node:test";

import { EventSource } from "eventsource";

import { SwitchboardError } from "../../../static/js/switchboard.js";
import { Gunicorn, client, closeClients, follow, ids, publish, texts, token, waitFor } from "./support.mjs";

const OPTIONS = { transports: ["sse"], eventSource: true, EventSource, backoff: { base: 100, cap: 800 } };
let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;

/** Records which reader each stream used ("eventsource", or undefined for fetch). */
function readers(sb) {
  const seen = [];
  sb.on("traffic", (t) => { if (t.kind === "stream" && t.type === "start") seen.push(t.reader); });
  return seen;
}

/** A TCP proxy in front of `port` whose cut() closes every connection it carries. */
async function tcpProxy(port) {
  const sockets = new Set();
  const server = createServer((inbound) => {
    const outbound = connect(port, "127.0.0.1");
    for (const [a, b] of [[inbound, outbound], [outbound, inbound]]) {
      sockets.add(a);
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => { sockets.delete(a); b.destroy(); });
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut: () => { for (const socket of sockets) socket.destroy(); },
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(resolve); }),
  };
}

let server;
afterEach(closeClients);

describe("open server", () => {
  before(async () => { server = await new Gunicorn().start(); });
  after(async () => { await server?.close(); });

  test("history, then live events of the listed types, read with EventSource", async () => {
    const topic = fresh("es");
    const old = await publish(server.url, topic, { text: "old" });
    const sb = client(server.url, OPTIONS);
    const seen = readers(sb);
    const got = follow(sb, topic, { history: 10 });
    await got.sub.ready;
    assert.deepEqual(seen, ["eventsource"]);
    assert.equal(got.events[0].id, old.id);
    assert.equal(got.events[0].info.history, true);
    const live = await publish(server.url, topic, { text: "live" });
    const mine = await sb.publish(topic, { text: "mine" });
    await waitFor(() => got.events.length === 3, 5000, "the live events");
    assert.deepEqual(ids(got.events), [old.id, live.id, mine.id]);
    assert.equal(got.events[1].info.transport, "sse");
    assert.deepEqual(sb.errors, []);
  });

  test("a type not in eventTypes is not heard; one listed is", async () => {
    const topic = fresh("types");
    const sb = client(server.url, { ...OPTIONS, eventTypes: ["message", "note"] });
    const got = follow(sb, topic);
    await got.sub.ready;
    await publish(server.url, topic, { text: "plain" });
    const note = await fetch(`${server.url}/api/topics/${topic}/events`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ type: "note", data: { text: "note" } }),
    }).then((res) => res.json());
    await waitFor(() => got.events.length === 2, 5000, "both events");
    assert.equal(got.events[1].id, note.id);
    assert.equal(got.events[1].type, "note");
  });

  test("a drop reopens with ?last_event_id: what was published meanwhile comes once, in order", async () => {
    const topic = fresh("drop");
    await publish(server.url, topic, { text: "before" });
    const sb = client(server.url, OPTIONS);
    const urls = [];
    sb.on("traffic", (t) => { if (t.kind === "stream" && t.type === "start") urls.push(t.url); });
    const got = follow(sb, topic, { history: 5 });
    await got.sub.ready;
    sb.drop(300);
    const missed = [];
    for (let i = 0; i < 3; i += 1) missed.push(await publish(server.url, topic, { text: `m${i}` }));
    await waitFor(() => got.events.length === 4, 8000, "the missed events");
    assert.deepEqual(texts(got.events), ["before", "m0", "m1", "m2"]);
    assert.equal(new URL(urls[1]).searchParams.get("last_event_id"), `${topic}~${got.events[0].id}`);
  });

  test("a cut connection: EventSource reconnects by itself with Last-Event-ID, nothing lost or doubled", async () => {
    const proxy = await tcpProxy(server.port);
    try {
      const topic = fresh("cut");
      await publish(server.url, topic, { text: "first" });
      const sb = client(proxy.url, OPTIONS);
      const seen = readers(sb);
      const got = follow(sb, topic, { history: 5 });
      await got.sub.ready;
      proxy.cut();
      await waitFor(() => sb.states.some((s) => s.state === "reconnecting" && s.browser), 5000, "the browser's reconnect");
      const missed = [];
      for (let i = 0; i < 3; i += 1) missed.push(await publish(server.url, topic, { text: `m${i}` }));
      await waitFor(() => got.events.length === 4, 15000, "the missed events");
      assert.deepEqual(texts(got.events), ["first", "m0", "m1", "m2"]);
      assert.deepEqual(seen, ["eventsource"], "one EventSource: it reconnected by itself");
      assert.equal(sb.state, "open");
      assert.equal(got.sub.state, "subscribed");
      assert.equal(sb.stats.duplicates, 0);
    } finally {
      await proxy.close();
    }
  });

  test("with a token to send, the stream is read with fetch()", async () => {
    const sb = client(server.url, { ...OPTIONS, token: "not-checked-here" });
    const seen = readers(sb);
    const got = follow(sb, fresh("token"));
    await got.sub.ready;
    assert.deepEqual(seen, [undefined]);
  });
});

describe("access control on", () => {
  const SECRET = "switchboard-js-test-secret-0123456789abcdef";
  before(async () => { server = await new Gunicorn({ SWITCHBOARD_AUTH_SECRET: SECRET }).start(); });
  after(async () => { await server?.close(); });

  test("anonymous and refused: a typed error with the server's code, asked with fetch()", async () => {
    const sb = client(server.url, OPTIONS);
    follow(sb, fresh("closed"));
    await waitFor(() => sb.errors.length >= 1, 8000, "the refusal");
    const err = sb.errors[0];
    assert.ok(err instanceof SwitchboardError);
    assert.equal(err.code, "unauthorized");
    assert.equal(err.status, 401);
    assert.equal(err.fromServer, true);
  });

  test("a forbidden topic fails alone (identity from outside the library, as a cookie); the other carries on", async () => {
    const auth = { Authorization: `Bearer ${token(SECRET, "limited", { subscribe: ["open.*"], publish: [] })}` };
    // What a browser's cookie does: every request carries the identity, the library sends no token.
    const withIdentity = (url, init = {}) => fetch(url, { ...init, headers: { ...init.headers, ...auth } });
    class CookieEventSource extends EventSource {
      constructor(url, init) { super(url, { ...init, fetch: withIdentity }); }
    }
    const sb = client(server.url, { ...OPTIONS, EventSource: CookieEventSource, fetch: withIdentity });
    const seen = readers(sb);
    const allowed = fresh("open.es");
    const secret = fresh("secret");
    const ok = follow(sb, allowed);
    const no = follow(sb, secret);
    await assert.rejects(no.sub.ready, (err) => err instanceof SwitchboardError && err.code === "forbidden");
    assert.equal(no.errors[0].topic, secret);
    await ok.sub.ready;
    const admin = { Authorization: `Bearer ${token(SECRET, "admin")}` };
    const event = await publish(server.url, allowed, { text: "still here" }, admin);
    await waitFor(() => ok.events.length === 1, 5000, "the allowed topic's event");
    assert.equal(ok.events[0].id, event.id);
    assert.ok(seen.every((reader) => reader === "eventsource"), seen.join());
  });
});
