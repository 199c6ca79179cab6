// switchboard.js under Node against a real gunicorn (in-memory hub): each transport forced
// in turn, then the default chain. Subscribe, publish (over the socket and over HTTP),
// several topics on one connection, history on entry, a drop with events published
// meanwhile (resumed once each, in order), unsubscribe.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { SwitchboardError } from "../../../static/js/switchboard.js";
import { Gunicorn, TRANSPORTS, client, closeClients, follow, ids, publish, sleep, texts, waitFor } from "./support.mjs";

let server;
before(async () => { server = await new Gunicorn().start(); });
afterEach(closeClients);
after(async () => { await server.close(); });

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;

for (const transport of TRANSPORTS) {
  describe(`forced ${transport}`, () => {
    const options = { transports: [transport], pollInterval: 100, backoff: { base: 100, cap: 1000 } };

    test("subscribe, then events from a third party and from the client itself, once each, in order", async () => {
      const sb = client(server.url, options);
      const topic = fresh("basic");
      const got = follow(sb, topic);
      await got.sub.ready;
      assert.equal(sb.state, "open");
      assert.equal(sb.transport, transport);
      const first = await publish(server.url, topic, { text: "one" });
      const mine = await sb.publish(topic, { text: "two" }, { type: "note" });
      assert.equal(mine.topic, topic);
      assert.match(mine.id, /^[0-9a-f]+-\d+$/);
      if (transport !== "websocket") assert.deepEqual(mine.data, { text: "two" }, "over HTTP: the stored event");
      await waitFor(() => got.events.length === 2, 5000, "two events");
      assert.deepEqual(ids(got.events), [first.id, mine.id]);
      assert.equal(got.events[1].type, "note");
      assert.equal(got.events[0].info.transport, transport);
      assert.equal(got.events[0].info.history, false);
      assert.deepEqual(got.gaps, []);
      assert.deepEqual(sb.errors, []);
      sb.close();
      assert.equal(sb.state, "closed");
      await assert.rejects(sb.publish(topic, {}), (err) => err instanceof SwitchboardError && err.code === "closed");
    });

    test("several topics on one connection, and unsubscribe stops one", async () => {
      const sb = client(server.url, options);
      const [a, b] = [fresh("multi-a"), fresh("multi-b")];
      const requests = [];
      sb.on("traffic", (t) => { if (t.type === "start" && t.kind !== "publish") requests.push(t.kind); });
      const gotA = follow(sb, a);
      const gotB = follow(sb, b);
      await Promise.all([gotA.sub.ready, gotB.sub.ready]);
      for (let i = 0; i < 3; i += 1) {
        await publish(server.url, a, { text: `a${i}` });
        await publish(server.url, b, { text: `b${i}` });
      }
      await waitFor(() => gotA.events.length === 3 && gotB.events.length === 3, 5000, "both topics");
      assert.deepEqual(texts(gotA.events), ["a0", "a1", "a2"]);
      assert.deepEqual(texts(gotB.events), ["b0", "b1", "b2"]);
      if (transport === "websocket") assert.deepEqual(requests, ["websocket"], "one socket for both topics");
      if (transport === "sse") assert.ok(requests.filter((k) => k === "stream").length <= 2, requests.join());
      gotB.sub.unsubscribe();
      assert.equal(gotB.sub.state, "unsubscribed");
      await publish(server.url, b, { text: "b-after" });
      await publish(server.url, a, { text: "a-after" });
      await waitFor(() => gotA.events.length === 4, 5000, "a-after");
      await sleep(300);
      assert.equal(gotB.events.length, 3, "nothing after unsubscribe");
      sb.close();
    });

    test("history on entry, then live from its cursor", async () => {
      const topic = fresh("history");
      const old = [];
      for (let i = 0; i < 5; i += 1) old.push(await publish(server.url, topic, { text: `old${i}` }));
      const sb = client(server.url, options);
      const got = follow(sb, topic, { history: 3 });
      await got.sub.ready;
      const live = await publish(server.url, topic, { text: "live" });
      await waitFor(() => got.events.length === 4, 5000, "history and live");
      assert.deepEqual(ids(got.events), [...ids(old.slice(2)), live.id]);
      assert.deepEqual(got.events.map((e) => e.info.history), [true, true, true, false]);
      sb.close();
    });

    test("since: resume after a known cursor", async () => {
      const topic = fresh("since");
      const events = [];
      for (let i = 0; i < 4; i += 1) events.push(await publish(server.url, topic, { text: `e${i}` }));
      const sb = client(server.url, options);
      const got = follow(sb, topic, { since: events[1].id });
      await waitFor(() => got.events.length === 2, 5000, "the two after since");
      assert.deepEqual(ids(got.events), ids(events.slice(2)));
      sb.close();
    });

    test("a drop: events published meanwhile come back once each, in order, then live", async () => {
      const sb = client(server.url, options);
      const topic = fresh("drop");
      const got = follow(sb, topic);
      await got.sub.ready;
      const before = await publish(server.url, topic, { text: "before" });
      await waitFor(() => got.events.length === 1, 5000, "before");
      sb.drop(600);
      assert.equal(sb.state, "reconnecting");
      assert.equal(got.sub.state, "subscribing");
      const missed = [];
      for (let i = 0; i < 5; i += 1) missed.push(await publish(server.url, topic, { text: `missed${i}` }));
      await waitFor(() => got.sub.state === "subscribed" && sb.state === "open", 5000, "back");
      const live = await publish(server.url, topic, { text: "live" });
      await waitFor(() => got.events.length === 7, 5000, "all seven");
      assert.deepEqual(ids(got.events), [before.id, ...ids(missed), live.id]);
      assert.deepEqual(got.gaps, []);
      assert.equal(sb.stats.duplicates, 0);
      assert.deepEqual(sb.errors, []);
      sb.close();
    });
  });
}

describe("the default chain", () => {
  test("uses the WebSocket when it works, and says so", async () => {
    const sb = client(server.url);
    const chosen = [];
    sb.on("transport", (detail) => chosen.push(detail.transport));
    const got = follow(sb, fresh("chain"));
    await got.sub.ready;
    assert.deepEqual(chosen, ["websocket"]);
    assert.deepEqual(sb.states.map((s) => s.state), ["connecting", "open"]);
    sb.close();
  });

  test("without a WebSocket implementation (plain Node), SSE", async () => {
    const sb = client(server.url, { WebSocket: null });
    assert.deepEqual(sb.transports, ["sse", "long-polling"]);
    const topic = fresh("nows");
    const got = follow(sb, topic);
    await got.sub.ready;
    assert.equal(sb.transport, "sse");
    const event = await publish(server.url, topic, { text: "x" });
    await waitFor(() => got.events.length === 1, 5000, "event");
    assert.equal(got.events[0].id, event.id);
    sb.close();
  });

  test("a WebSocket that never opens while /healthz answers: the next transport", async () => {
    class Blocked { // what a proxy that drops Upgrade looks like from the client: an error, then 1006
      constructor() {
        setTimeout(() => this.onclose && this.onclose({ code: 1006, reason: "" }), 10);
      }
      send() { throw new Error("not open"); }
      close() {}
    }
    const sb = client(server.url, { WebSocket: Blocked, backoff: { base: 100, cap: 1000 } });
    const chosen = [];
    sb.on("transport", (detail) => chosen.push(detail.transport));
    const topic = fresh("blocked");
    const got = follow(sb, topic);
    await got.sub.ready;
    assert.deepEqual(chosen, ["sse"]);
    assert.equal(sb.errors[0].code, "network");
    assert.equal(sb.errors[0].transport, "websocket");
    const event = await publish(server.url, topic, { text: "x" });
    await waitFor(() => got.events.length === 1, 5000, "event");
    assert.equal(got.events[0].id, event.id);
    sb.close();
  });

  test("bad arguments are refused at once", () => {
    assert.throws(() => client(server.url, { transports: ["carrier-pigeon"] }), /unknown transport/);
    const sb = client(server.url);
    assert.throws(() => sb.subscribe("not a topic", {}), (err) => err.code === "bad_topic");
    sb.subscribe("twice", {});
    assert.throws(() => sb.subscribe("twice", {}), (err) => err.code === "already_subscribed");
    sb.close();
  });
});
