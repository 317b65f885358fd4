// Drives real client libraries for the protocol integration tests.
//
// Usage: node driver.js PROTOCOL URL. Reads one JSON command per line on stdin and answers
// one JSON line on stdout once the library reports the outcome:
//   {"op": "open", "client": "c1"}                 connect a client (one WebSocket)
//   {"op": "join", "client": "c1", "topic": "T"}   subscribe; answers {"result": "joined"|"refused"}
//   {"op": "leave", "client": "c1", "topic": "T"}  unsubscribe
//   {"op": "server_leave", "client": "c1", "topic": "T"}  the test server ends the subscription
//   {"op": "kill", "client": "c1"}                 abrupt close: the TCP connection is destroyed
//                                                   without a close frame, reconnection off
//   {"op": "close", "client": "c1"}                a normal close
// Every answer carries "held": open client -> topics the library says it is in now, which is
// what the sidecar's counts must equal. Errors answer {"error": "..."}.
"use strict";

const readline = require("node:readline");
const WebSocket = require("ws");

const [protocolName, url] = process.argv.slice(2);
const sockets = new Map(); // client -> [ws instances it created]
let currentClient = null;

// A WebSocket class that remembers which test client created each connection.
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    const owner = currentClient;
    if (!sockets.has(owner)) sockets.set(owner, []);
    sockets.get(owner).push(this);
  }
}

function killSockets(client) {
  for (const ws of sockets.get(client) || []) ws.terminate();
}

const protocol = require(`./clients/${protocolName}.js`)({ url, WebSocket: TrackedWebSocket });

function held() {
  const result = {};
  for (const client of protocol.clients()) {
    // a library may close a connection on its own (socket.io-client closes it when its
    // last namespace is refused): only open connections count
    if (!protocol.isOpen || protocol.isOpen(client)) result[client] = protocol.held(client).sort();
  }
  return result;
}

function withTimeout(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
  ]);
}

async function handle(command) {
  const { op, client, topic } = command;
  currentClient = client;
  switch (op) {
    case "open":
      return withTimeout(protocol.open(client), 20000, `open ${client}`);
    case "join":
      return withTimeout(protocol.join(client, topic), 20000, `join ${client} ${topic}`);
    case "leave":
      return withTimeout(protocol.leave(client, topic), 20000, `leave ${client} ${topic}`);
    case "kill":
      protocol.stopReconnecting(client);
      if (protocol.kill) protocol.kill(client);
      else killSockets(client);
      return protocol.forget(client);
    case "server_leave":
      return withTimeout(protocol.serverLeave(client, topic), 20000, `server_leave ${client}`);
    case "close":
      return withTimeout(protocol.close(client), 20000, `close ${client}`);
    default:
      throw new Error(`unknown op ${op}`);
  }
}

const input = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
input.on("line", (line) => {
  queue = queue.then(async () => {
    let answer;
    try {
      const result = await handle(JSON.parse(line));
      answer = { result: result === undefined ? null : result, held: held() };
    } catch (error) {
      answer = { error: String(error && error.stack ? error.stack : error), held: held() };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  });
});
input.on("close", () => queue.then(() => process.exit(0)));
