// switchboard.js with access control on (SWITCHBOARD_AUTH_SECRET) and a small publish rate
// limit, on each transport forced in turn: tokens from an application function, renewed
// before they expire with no event lost; a forbidden topic fails alone with the server's
// code; a publish beyond the limit rejects with "rate_limited" and a retry delay.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { SwitchboardError } from "../../../static/js/switchboard.js";
import { Gunicorn, client, closeClients, follow, ids, publish, token, waitFor } from "./support.mjs";

const SECRET = "switchboard-js-test-secret-0123456789abcdef";
const TRANSPORTS = ["websocket", "sse", "long-polling", "polling"];
const OPTIONS = { backoff: { base: 100, cap: 800 }, pollInterval: 100 };
const BURST = 3;
let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`;
const bearer = (sub, options) => ({ Authorization: `Bearer ${token(SECRET, sub, options)}` });

const AUTH = { SWITCHBOARD_AUTH_SECRET: SECRET, SWITCHBOARD_AUTH_REFRESH_GRACE: "5" };
let server;
afterEach(closeClients);

describe("tokens and topics", () => {
  before(async () => { server = await new Gunicorn(AUTH).start(); });
  after(async () => { await server?.close(); });

  for (const transport of TRANSPORTS) {
    describe(`forced ${transport}`, () => {
      const options = { ...OPTIONS, transports: [transport] };

      test("a token that lives 4 s is asked for again before it runs out, and no event is lost", async () => {
        const asked = [];
        const sb = client(server.url, {
          ...options,
          token: async () => {
            asked.push(Date.now());
            return token(SECRET, `renewing-${transport}`, { seconds: 4 });
          },
        });
        const topic = fresh("renew");
        const got = follow(sb, topic);
        await got.sub.ready;
        const sent = [];
        // Events all through three token lifetimes; the third token is asked for by then.
        const publisher = bearer("publisher");
        while (asked.length < 3) {
          sent.push(await publish(server.url, topic, { text: `e${sent.length}` }, publisher));
          await waitFor(() => got.events.length === sent.length, 8000, `event ${sent.length}`);
        }
        sent.push(await publish(server.url, topic, { text: "last" }, publisher));
        await waitFor(() => got.events.length === sent.length, 8000, "the last event");
        assert.deepEqual(ids(got.events), ids(sent));
        assert.deepEqual(got.gaps, []);
        assert.deepEqual(got.errors, []);
        assert.deepEqual(sb.errors.filter((e) => e.code !== "shutting_down"), []);
        const lives = asked.slice(1).map((t, i) => t - asked[i]);
        assert.ok(lives.every((ms) => ms < 4000), `renewed before expiry: ${lives}`);
        assert.equal(got.events[0].sender, "publisher");
      });

      test("a forbidden topic fails alone, with the server's code; the allowed one carries on", async () => {
        const sb = client(server.url, {
          ...options, token: () => token(SECRET, "limited", { subscribe: ["open.*"], publish: ["open.*"] }),
        });
        const allowed = fresh("open.topic");
        const secret = fresh("secret");
        const ok = follow(sb, allowed);
        const no = follow(sb, secret);
        await assert.rejects(no.sub.ready, (err) => err instanceof SwitchboardError && err.code === "forbidden");
        assert.equal(no.sub.state, "failed");
        assert.equal(no.errors.length, 1);
        assert.equal(no.errors[0].code, "forbidden");
        assert.equal(no.errors[0].topic, secret);
        assert.equal(no.errors[0].fromServer, true);
        await ok.sub.ready;
        const event = await publish(server.url, allowed, { text: "still here" }, bearer("publisher"));
        await waitFor(() => ok.events.length === 1, 5000, "the allowed topic's event");
        assert.equal(ok.events[0].id, event.id);
        await assert.rejects(sb.publish(secret, { text: "no" }),
          (err) => err instanceof SwitchboardError && err.code === "forbidden" && err.fromServer);
      });

    });
  }

  test("a fixed token that expires: the error is unauthorized, told, never a hot loop", async () => {
    const sb = client(server.url, { ...OPTIONS, transports: ["websocket"], token: token(SECRET, "short", { seconds: 2 }) });
    const got = follow(sb, fresh("expiring"));
    await got.sub.ready;
    await waitFor(() => sb.errors.some((e) => e.code === "unauthorized"), 15000, "unauthorized");
    const err = sb.errors.find((e) => e.code === "unauthorized");
    assert.ok(err instanceof SwitchboardError);
    const waits = () => sb.states.filter((s) => s.retryIn !== undefined).map((s) => s.retryIn);
    await waitFor(() => waits().length >= 4, 15000, "four attempts");
    assert.ok(waits().filter((ms) => ms === 0).length <= 1, `at most one attempt at once: ${waits()}`);
    assert.ok(sb.errors.every((e) => e instanceof SwitchboardError), "every failure typed");
});
});

// HTTP publishes are limited per address: a server of its own, so the other tests' are not counted.
describe("the publish rate limit", () => {
  before(async () => {
    server = await new Gunicorn({ ...AUTH, SWITCHBOARD_PUBLISH_BURST: String(BURST), SWITCHBOARD_PUBLISH_RATE: "0.2" }).start();
  });
  after(async () => { await server?.close(); });

  for (const transport of TRANSPORTS) {
    describe(`forced ${transport}`, () => {
      const options = { ...OPTIONS, transports: [transport] };

      test(`publishes beyond the burst of ${BURST} reject with rate_limited and a retry delay`, async () => {
        const sb = client(server.url, { ...options, token: () => token(SECRET, `eager-${transport}`) });
        const topic = fresh("limited");
        const got = follow(sb, topic);
        await got.sub.ready;
        const results = [];
        for (let i = 0; i < BURST + 2; i += 1) {
          results.push(await sb.publish(topic, { text: `p${i}` }).then((r) => r, (err) => err));
        }
        const refused = results.filter((r) => r instanceof SwitchboardError);
        assert.ok(refused.length >= 1, "at least one publish refused");
        for (const err of refused) {
          assert.equal(err.code, "rate_limited");
          assert.ok(err.retryAfter > 0, `retryAfter ${err.retryAfter}`);
          assert.equal(err.fromServer, true);
        }
        const accepted = results.filter((r) => !(r instanceof SwitchboardError));
        await waitFor(() => got.events.length === accepted.length, 5000, "the accepted publishes");
        assert.deepEqual(ids(got.events), accepted.map((r) => r.id), "only the accepted ones were published");
      });
    });
  }
});
