// switchboard.js across a server restart, on each transport forced in turn.
// - Redis backend: the history outlives the worker. A second gunicorn on the same Redis takes
//   publishes while the first is down; when the first is back, the client resumes from its
//   cursors: every event once, in order, no gap.
// - In-memory backend: the restarted server has a new epoch, so the old cursor is answered
//   with a gap, told once, and the events after the restart follow it, once each, in order.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { Gunicorn, RedisServer, client, closeClients, follow, ids, publish, waitFor } from "./support.mjs";

const TRANSPORTS = ["websocket", "sse", "long-polling"];
// Short waits, so that the client comes back soon after the server does.
const OPTIONS = { backoff: { base: 100, cap: 800 }, connectTimeout: 3000, longPollTimeout: 5 };
let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;

afterEach(closeClients);

describe("Redis backend: a restart loses nothing and repeats nothing", () => {
  let redis;
  let server;
  let other;
  before(async () => {
    redis = await new RedisServer().start();
    const env = { SWITCHBOARD_REDIS_URL: redis.url };
    server = await new Gunicorn(env).start();
    other = await new Gunicorn(env).start();
  });
  after(async () => {
    await server?.close();
    await other?.close();
    await redis?.close();
  });

  for (const transport of TRANSPORTS) {
    test(`forced ${transport}`, async () => {
      const sb = client(server.url, { ...OPTIONS, transports: [transport] });
      const topic = fresh("redis-restart");
      const got = follow(sb, topic);
      await got.sub.ready;
      const sent = [];
      for (let i = 0; i < 3; i += 1) sent.push(await publish(server.url, topic, { text: `before${i}` }));
      await waitFor(() => got.events.length === 3, 5000, "the events before the restart");
      await server.stop();
      await waitFor(() => got.sub.state === "subscribing", 10000, "the client to see the server gone");
      for (let i = 0; i < 4; i += 1) sent.push(await publish(other.url, topic, { text: `while-down${i}` }));
      await server.start();
      await waitFor(() => got.sub.state === "subscribed" && sb.state === "open", 15000, "the client back");
      sent.push(await publish(other.url, topic, { text: "after" }));
      await waitFor(() => got.events.length >= sent.length, 10000, "every event");
      assert.deepEqual(ids(got.events), ids(sent), "each event once, in order");
      assert.deepEqual(got.gaps, []);
      assert.equal(sb.stats.duplicates, 0);
      assert.equal(sb.transport, transport);
    });
  }
});

describe("in-memory backend: a restart is an explicit gap", () => {
  let server;
  before(async () => { server = await new Gunicorn().start(); });
  after(async () => { await server?.close(); });

  for (const transport of TRANSPORTS) {
    test(`forced ${transport}`, async () => {
      const sb = client(server.url, { ...OPTIONS, transports: [transport] });
      const topic = fresh("memory-restart");
      const got = follow(sb, topic);
      await got.sub.ready;
      const old = [await publish(server.url, topic, { text: "old0" }), await publish(server.url, topic, { text: "old1" })];
      await waitFor(() => got.events.length === 2, 5000, "the events before the restart");
      await server.stop();
      await waitFor(() => got.sub.state === "subscribing", 10000, "the client to see the server gone");
      await server.start();
      // Published on the new server before the client is back: after the gap, from history.
      const fresh1 = [await publish(server.url, topic, { text: "new0" }), await publish(server.url, topic, { text: "new1" })];
      await waitFor(() => got.gaps.length === 1, 15000, "the gap");
      await waitFor(() => got.sub.state === "subscribed", 10000, "subscribed again");
      fresh1.push(await publish(server.url, topic, { text: "new2" }));
      await waitFor(() => got.events.length >= 5, 10000, "the events after the restart");
      assert.deepEqual(ids(got.events), ids([...old, ...fresh1]), "each event once, in order");
      assert.equal(got.gaps.length, 1, "the gap is told once");
      assert.equal(got.gaps[0].after, 2, "between the old events and the new ones");
      assert.equal(got.gaps[0].topic, topic);
      assert.equal(sb.stats.duplicates, 0);
    });
  }
});
