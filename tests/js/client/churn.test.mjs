// Churn: 50 switchboard.js clients (WebSocket, SSE and long polling in turn, two topics each)
// through random drops for SWITCHBOARD_CHURN_SECONDS (default 30) while a publisher keeps
// publishing. At the end every client has every event of its topics once and in order;
// a hole is allowed only right after an explicit gap (history keeps far more than this
// publishes, so none is expected, but a gap told is not a failure, a silent hole is).
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";

import { Gunicorn, RedisServer, client, closeClients, publish, scaled, sleep, waitFor } from "./support.mjs";

const CLIENTS = 50;
const SECONDS = Number(process.env.SWITCHBOARD_CHURN_SECONDS || "30");
const TOPICS = ["churn-a", "churn-b", "churn-c"];
const TRANSPORTS = ["websocket", "sse", "long-polling"];

let redis;
let server;
before(async () => {
  redis = await new RedisServer().start();
  server = await new Gunicorn({ SWITCHBOARD_REDIS_URL: redis.url, WEB_CONCURRENCY: "2" }).start();
});
after(async () => {
  await server?.close();
  await redis?.close();
});
afterEach(closeClients);

/** Where `events` departs from `published`: a repeat, a step back, or a hole with no gap before it. */
function departure(published, events, gapsBefore) {
  let next = 0;
  for (let k = 0; k < events.length; k += 1) {
    const at = published.indexOf(events[k].id, next);
    if (at < 0) return `event ${k} (${events[k].id}) repeated, out of order or never published`;
    if (at > next && !gapsBefore.has(k)) return `events ${published.slice(next, at).join(",")} lost with no gap`;
    next = at + 1;
  }
  if (next < published.length) return `missing the last ${published.length - next}`;
  return null;
}

test(`${CLIENTS} clients through random drops for ${SECONDS} s`, { timeout: scaled(SECONDS * 1000 + 120000) }, async () => {
  const followers = [];
  for (let i = 0; i < CLIENTS; i += 1) {
    const transport = TRANSPORTS[i % TRANSPORTS.length];
    const sb = client(server.url, {
      transports: [transport], backoff: { base: 100, cap: 2000 }, longPollTimeout: 5, connectTimeout: 5000,
    });
    const topics = [TOPICS[i % TOPICS.length], TOPICS[(i + 1) % TOPICS.length]];
    const got = new Map();
    for (const topic of topics) {
      const record = { events: [], gapsBefore: new Set() };
      record.sub = sb.subscribe(topic, {
        onEvent: (event) => record.events.push(event),
        onGap: () => record.gapsBefore.add(record.events.length),
        onError: (err) => { throw err; },
      });
      got.set(topic, record);
    }
    followers.push({ sb, transport, got });
  }
  await Promise.all(followers.flatMap((f) => [...f.got.values()].map((r) => r.sub.ready)));

  const published = new Map(TOPICS.map((topic) => [topic, []]));
  let drops = 0;
  const end = Date.now() + SECONDS * 1000;
  const publisher = (async () => {
    for (let i = 0; Date.now() < end; i += 1) {
      const topic = TOPICS[i % TOPICS.length];
      published.get(topic).push((await publish(server.url, topic, { n: i })).id);
      await sleep(15); // the publisher's pace (about 50 a second), not a wait for a condition
    }
  })();
  const dropper = (async () => {
    while (Date.now() < end) {
      const victim = followers[Math.floor(Math.random() * followers.length)];
      victim.sb.drop(Math.floor(Math.random() * 1500));
      drops += 1;
      await sleep(100 + Math.random() * 100); // the churn's pace: five to ten drops a second
    }
  })();
  await Promise.all([publisher, dropper]);

  const complete = (f) => [...f.got].every(([topic, r]) => {
    const ids = published.get(topic);
    return r.events.length && r.events[r.events.length - 1].id === ids[ids.length - 1];
  });
  await waitFor(() => followers.every(complete), 60000, "every client to catch up");

  const failures = [];
  let gaps = 0;
  for (const [i, f] of followers.entries()) {
    for (const [topic, r] of f.got) {
      gaps += r.gapsBefore.size;
      const why = departure(published.get(topic).map(String), r.events, r.gapsBefore);
      if (why) failures.push(`client ${i} (${f.transport}) on ${topic}: ${why}`);
    }
    assert.equal(f.sb.stats.duplicates, 0, `client ${i} (${f.transport}) saw a repeat`);
  }
  assert.deepEqual(failures, []);
  assert.ok(drops >= SECONDS * 3, `the churn happened: ${drops} drops`);
  const total = [...published.values()].reduce((sum, ids) => sum + ids.length, 0);
  console.log(`# churn: ${CLIENTS} clients, ${drops} drops, ${total} events, ${gaps} gaps told`);
});
