// A third-party SSE client (the `eventsource` npm package) driven by tests/e2e/test_sse.py.
//
// Usage: node sse_client.js <url> [--types a,b,...] [--header "Name: value"]...
//
// Prints one JSON object per line on stdout, as things happen:
//   {"kind":"request","lastEventId":<the Last-Event-ID header sent or null>,"authorization":...}
//   {"kind":"open"}
//   {"kind":"event","type":...,"id":<lastEventId>,"data":<the data string>}
//   {"kind":"error","code":...,"message":...,"readyState":...}
// Listens to "message", "gap" and every type given with --types.
// Reads commands on stdin, one per line: "close" closes the EventSource and exits.
// Exits by itself when stdin ends, so a dead test never leaves it behind.
"use strict";

function parseArgs(argv) {
  const options = { url: null, types: [], headers: {} };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--types") {
      options.types.push(...argv[++i].split(",").filter(Boolean));
    } else if (arg === "--header") {
      const raw = argv[++i];
      const colon = raw.indexOf(":");
      options.headers[raw.slice(0, colon).trim()] = raw.slice(colon + 1).trim();
    } else if (options.url === null) {
      options.url = arg;
    } else {
      throw new Error(`unexpected argument ${arg}`);
    }
  }
  if (options.url === null) throw new Error("usage: node sse_client.js <url> [--types a,b] [--header 'K: v']");
  return options;
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { EventSource } = await import("eventsource");

  // The package's documented hook for request headers: wrap fetch. We also report the
  // Last-Event-ID the library sends on each (re)connection, so the test can check it.
  const loggingFetch = (input, init) => {
    const headers = new Headers(init.headers);
    for (const [name, value] of Object.entries(options.headers)) headers.set(name, value);
    emit({ kind: "request", lastEventId: headers.get("last-event-id"), authorization: headers.get("authorization") });
    return fetch(input, { ...init, headers });
  };

  const source = new EventSource(options.url, { fetch: loggingFetch });
  source.addEventListener("open", () => emit({ kind: "open" }));
  source.addEventListener("error", (err) => {
    emit({ kind: "error", code: err.code ?? null, message: err.message ?? null, readyState: source.readyState });
  });
  for (const type of new Set(["message", "gap", ...options.types])) {
    source.addEventListener(type, (ev) => emit({ kind: "event", type: ev.type, id: ev.lastEventId, data: ev.data }));
  }

  let pending = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const command = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (command === "close") {
        source.close();
        emit({ kind: "closed" });
        process.exit(0);
      }
    }
  });
  process.stdin.on("end", () => {
    source.close();
    process.exit(0);
  });
}

main().catch((err) => {
  emit({ kind: "fatal", message: String(err && err.stack ? err.stack : err) });
  process.exit(2);
});
