// A work-queue program as one writes it for RabbitMQ's Web-STOMP plugin with @stomp/stompjs,
// run unchanged against Switchboard by tests/e2e/test_stomp_interop_broker.py (only the URL
// differs: RabbitMQ's is ws://host:15674/ws).
//
// Usage: node rabbitmq_program.js <ws-url> <tasks>
//
// Two workers share /queue/tasks with prefetch-count 1 and client acknowledgment (the
// RabbitMQ tutorial's "fair dispatch"); the first task is NACKed once by whichever worker
// gets it first and so comes back redelivered. Each finished task is announced on the
// topic /topic/logs.info, which a logger follows with the wildcard /topic/logs.*. A
// producer sends the tasks in one transaction. Prints one JSON line: what each worker did
// and what the logger heard, then exits.
"use strict";

const WebSocket = require("ws");
const { Client } = require("@stomp/stompjs");

const [url, count] = [process.argv[2], Number(process.argv[3] || 10)];

function connect(name) {
  return new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: () => new WebSocket(url, ["v12.stomp", "v11.stomp", "v10.stomp"]),
      connectHeaders: { login: "guest", passcode: "guest", host: "/" },
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      onConnect: () => resolve(client),
      onStompError: (frame) => reject(new Error(`${name}: ${frame.headers.message}: ${frame.body}`)),
    });
    client.activate();
  });
}

async function main() {
  const done = { w1: [], w2: [] };
  const redelivered = [];
  const logs = [];
  let nacked = false;
  let finished;
  const allDone = new Promise((resolve) => { finished = resolve; });

  const logger = await connect("logger");
  logger.subscribe("/topic/logs.*", (message) => logs.push(message.body));

  const workers = {};
  for (const name of ["w1", "w2"]) {
    const worker = await connect(name);
    workers[name] = worker;
    worker.subscribe("/queue/tasks", (message) => {
      const task = JSON.parse(message.body).task;
      if (message.headers.redelivered === "true") redelivered.push(task);
      if (task === 0 && !nacked) {
        nacked = true;
        message.nack(); // not now: back to the queue, for another worker
        return;
      }
      setTimeout(() => {
        done[name].push(task);
        worker.publish({ destination: "/topic/logs.info", body: `${name} did ${task}` });
        message.ack();
        if (done.w1.length + done.w2.length === count) finished();
      }, 5);
    }, { ack: "client", "prefetch-count": "1" });
  }

  const producer = await connect("producer");
  const tx = producer.begin();
  for (let task = 0; task < count; task += 1) {
    producer.publish({
      destination: "/queue/tasks",
      body: JSON.stringify({ task }),
      headers: { "content-type": "application/json", persistent: "true", transaction: tx.id },
    });
  }
  tx.commit();

  await allDone;
  await new Promise((resolve) => setTimeout(resolve, 200)); // the last log line
  process.stdout.write(`${JSON.stringify({ done, redelivered, logs })}\n`);
  for (const client of [logger, producer, ...Object.values(workers)]) await client.deactivate();
  process.exit(0);
}

main().catch((err) => {
  process.stdout.write(`${JSON.stringify({ error: String(err && err.message) })}\n`);
  process.exit(1);
});
