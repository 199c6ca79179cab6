// @stomp/stompjs 7 under Node (with the `ws` package), driven by tests/e2e/test_stomp_interop.py.
//
// Usage: node stomp_client_v7.js <ws-url> [--heartbeat <outgoing>,<incoming>] [--login <l> --passcode <p>]
//
// The socket comes from the `ws` package through webSocketFactory (Node 20 has no global
// WebSocket), offering the library's own sub-protocol list (v12.stomp, v11.stomp, v10.stomp)
// as its brokerURL path does in a browser.
//
// Prints one JSON object per line on stdout, as things happen:
//   {"kind":"open","protocol":<negotiated sub-protocol>}
//   {"kind":"connected","headers":{...}}
//   {"kind":"message","headers":{...},"body":<text>,"binary":<came in a binary WebSocket message>,
//    "base64":<body octets>}
//   {"kind":"receipt","id":<receipt-id>}
//   {"kind":"error","headers":{...},"body":<text>}
//   {"kind":"heartbeat-in"} / {"kind":"heartbeat-out"}
//   {"kind":"close","code":<WebSocket close code>,"reason":<text>}
// Reads commands on stdin, one JSON object per line:
//   {"op":"subscribe","destination":...,"id":...,"headers":{...},"receipt":...}
//   {"op":"send","destination":...,"body":<text>|"base64":<octets>,"headers":{...},"receipt":...}
//   {"op":"ack","message":<message-id>,"subscription":<id>,"headers":{...}} / {"op":"nack",...}
//   {"op":"begin","transaction":<id>} / {"op":"commit"|"abort","transaction":<id>,"receipt":<id>}
//     (COMMIT and ABORT with a receipt go through the library's frame writer: its
//     Transaction object takes no headers)
//   {"op":"disconnect"}
// Exits when stdin ends, so a dead test never leaves it behind.
"use strict";

const readline = require("readline");
const WebSocket = require("ws");
const { Client } = require("@stomp/stompjs");

function parseArgs(argv) {
  const options = { url: null, heartbeat: [10000, 10000], headers: {} };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--heartbeat") options.heartbeat = argv[++i].split(",").map(Number);
    else if (arg === "--login") options.headers.login = argv[++i];
    else if (arg === "--passcode") options.headers.passcode = argv[++i];
    else if (options.url === null) options.url = arg;
    else throw new Error(`unexpected argument ${arg}`);
  }
  return options;
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

const options = parseArgs(process.argv.slice(2));
const subscriptions = {};
// Whether the WebSocket message that carried the frame being handled was binary. Our
// listener is added before the library sets onmessage, so it runs first.
let binaryMessage = false;

const client = new Client({
  webSocketFactory: () => {
    const socket = new WebSocket(options.url, client.stompVersions.protocolVersions());
    socket.addEventListener("open", () => emit({ kind: "open", protocol: socket.protocol }));
    socket.addEventListener("message", (event) => { binaryMessage = typeof event.data !== "string"; });
    return socket;
  },
  connectHeaders: options.headers,
  heartbeatOutgoing: options.heartbeat[0],
  heartbeatIncoming: options.heartbeat[1],
  reconnectDelay: 0, // one connection: the test decides what happens next
  debug: (line) => {
    if (line === ">>> PING") emit({ kind: "heartbeat-out" });
  },
  onHeartbeatReceived: () => emit({ kind: "heartbeat-in" }),
  onConnect: (frame) => emit({ kind: "connected", headers: frame.headers }),
  onStompError: (frame) => emit({ kind: "error", headers: frame.headers, body: frame.body }),
  onWebSocketClose: (event) => emit({ kind: "close", code: event.code, reason: String(event.reason || "") }),
  onUnhandledReceipt: (frame) => emit({ kind: "receipt", id: frame.headers["receipt-id"] }),
  onUnhandledMessage: (message) => emit({ kind: "unhandled", headers: message.headers }),
});

function onMessage(message) {
  emit({
    kind: "message",
    headers: message.headers,
    body: message.body, // the octets decoded as UTF-8 by the library
    binary: binaryMessage,
    base64: Buffer.from(message.binaryBody).toString("base64"),
  });
}

const commands = {
  subscribe(cmd) {
    const headers = { id: cmd.id, ...(cmd.headers || {}) };
    if (cmd.receipt) headers.receipt = cmd.receipt;
    subscriptions[cmd.id] = client.subscribe(cmd.destination, onMessage, headers);
  },
  unsubscribe(cmd) {
    subscriptions[cmd.id].unsubscribe();
  },
  send(cmd) {
    const headers = { ...(cmd.headers || {}) };
    if (cmd.receipt) headers.receipt = cmd.receipt;
    const params = { destination: cmd.destination, headers };
    if (cmd.base64 !== undefined) params.binaryBody = new Uint8Array(Buffer.from(cmd.base64, "base64"));
    else params.body = cmd.body;
    client.publish(params);
  },
  ack(cmd) {
    client.ack(cmd.message, cmd.subscription, cmd.headers || {});
  },
  nack(cmd) {
    client.nack(cmd.message, cmd.subscription, cmd.headers || {});
  },
  begin(cmd) {
    client.begin(cmd.transaction);
  },
  commit(cmd) {
    const headers = cmd.receipt ? { receipt: cmd.receipt } : {};
    client._stompHandler._transmit({ command: "COMMIT", headers: { transaction: cmd.transaction, ...headers } });
  },
  abort(cmd) {
    const headers = cmd.receipt ? { receipt: cmd.receipt } : {};
    client._stompHandler._transmit({ command: "ABORT", headers: { transaction: cmd.transaction, ...headers } });
  },
  disconnect() {
    client.deactivate();
  },
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  try {
    commands[cmd.op](cmd);
  } catch (err) {
    emit({ kind: "exception", op: cmd.op, message: String(err && err.message) });
  }
});
process.stdin.on("end", () => {
  client.deactivate({ force: true }).finally(() => process.exit(0));
});

client.activate();
