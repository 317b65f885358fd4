// Drives real client libraries for the protocol integration tests.
// Usage: node client.js PROTOCOL URL. Reads one JSON command per line on stdin and answers
// each with one JSON line on stdout ({"n": <its n>, ...}):
//   {"n", "cmd": "open", "sock"}                   -> {"ok": true} once connected
//   {"n", "cmd": "sub", "sock", "topic", "query"?} -> {"granted": bool} once the server
//        confirmed (graphql: first result; mqtt: SUBACK; stomp: first MESSAGE; pusher:
//        subscription_succeeded) or refused it (error / SUBACK 0x80 / ERROR / subscription_error)
//   {"n", "cmd": "unsub", "sock", "topic"}         -> {"ok": true} (mqtt: UNSUBACK; stomp: RECEIPT)
//   {"n", "cmd": "close", "sock"}                  -> {"ok": true} (a normal close)
//   {"n", "cmd": "held"} -> {"connections": open sockets, "topics": {topic: sockets holding it}}
// "held" is what the clients hold: subscriptions confirmed and not ended, on open sockets.
"use strict";

const readline = require("readline");
const WebSocket = require("ws");

const [protocol, url] = process.argv.slice(2);
const sockets = new Map(); // sock -> {held: Map(topic -> handle), open: bool, ...library state}

function once(resolve) {
  let done = false;
  return (value) => {
    if (!done) {
      done = true;
      resolve(value);
    }
  };
}

const adapters = {
  graphql: {
    open(state) {
      const { createClient } = require("graphql-ws");
      return new Promise((resolve, reject) => {
        state.client = createClient({
          url,
          webSocketImpl: WebSocket,
          lazy: false,
          retryAttempts: 0,
          onNonLazyError: reject,
          on: { connected: () => resolve(), closed: () => (state.open = false) },
        });
      });
    },
    sub(state, topic, query) {
      return new Promise((resolve) => {
        const settle = once(resolve);
        const dispose = state.client.subscribe(
          { query: query || `subscription ${topic} { tick }` },
          { next: () => settle(true), error: () => settle(false), complete: () => settle(false) },
        );
        state.handles.set(topic, dispose);
      });
    },
    async unsub(state, topic) {
      state.handles.get(topic)();
    },
    async close(state) {
      await state.client.dispose();
    },
  },
  mqtt: {
    open(state) {
      const mqtt = require("mqtt");
      return new Promise((resolve, reject) => {
        state.client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0 });
        state.client.once("connect", () => resolve());
        state.client.once("error", reject);
        state.client.on("close", () => (state.open = false));
      });
    },
    sub(state, topic) {
      return new Promise((resolve) => {
        state.client.subscribe(topic, { qos: 0 }, (error, granted) => {
          resolve(!error && granted.every((grant) => grant.qos < 128));
        });
      });
    },
    unsub(state, topic) {
      return new Promise((resolve) => state.client.unsubscribe(topic, () => resolve()));
    },
    close(state) {
      return new Promise((resolve) => state.client.end(false, {}, () => resolve()));
    },
  },
  stomp: {
    open(state) {
      const { Client } = require("@stomp/stompjs");
      return new Promise((resolve) => {
        state.client = new Client({
          webSocketFactory: () => new WebSocket(url, ["v12.stomp"]),
          reconnectDelay: 0,
          heartbeatIncoming: 0,
          heartbeatOutgoing: 0,
          onConnect: () => resolve(),
          // ERROR ends every subscription; the server then closes the socket, and a
          // refused subscription is answered once the socket is closed
          onStompError: () => state.held.clear(),
          onWebSocketClose: () => {
            state.open = false;
            if (state.refuse) state.refuse();
          },
        });
        state.client.activate();
      });
    },
    sub(state, topic) {
      return new Promise((resolve) => {
        const settle = once(resolve);
        state.refuse = () => settle(false);
        state.handles.set(
          topic,
          state.client.subscribe(topic, () => settle(true)),
        );
      });
    },
    unsub(state, topic) {
      return new Promise((resolve) => {
        const receipt = `r-${Math.random()}`;
        state.client.watchForReceipt(receipt, () => resolve());
        state.handles.get(topic).unsubscribe({ receipt });
      });
    },
    async close(state) {
      await state.client.deactivate();
    },
  },
  pusher: {
    open(state) {
      const Pusher = require("pusher-js");
      const { port, hostname } = new URL(url);
      return new Promise((resolve) => {
        state.client = new Pusher("app-key", {
          wsHost: hostname,
          wsPort: Number(port),
          forceTLS: false,
          enabledTransports: ["ws"],
          cluster: "local",
          disableStats: true,
          channelAuthorization: {
            customHandler: ({ channelName }, callback) =>
              callback(null, { auth: channelName.endsWith("bad") ? "app-key:bad" : "app-key:ok" }),
          },
        });
        state.client.connection.bind("connected", () => resolve());
        state.client.connection.bind("disconnected", () => (state.open = false));
      });
    },
    sub(state, topic) {
      return new Promise((resolve) => {
        const settle = once(resolve);
        const channel = state.client.subscribe(topic);
        channel.bind("pusher:subscription_succeeded", () => settle(true));
        channel.bind("pusher:subscription_error", () => settle(false));
        state.handles.set(topic, channel);
      });
    },
    async unsub(state, topic) {
      state.client.unsubscribe(topic);
    },
    async close(state) {
      state.client.disconnect();
    },
  },
};

const adapter = adapters[protocol];

async function run(command) {
  if (command.cmd === "held") {
    const topics = {};
    let connections = 0;
    for (const state of sockets.values()) {
      if (!state.open) continue;
      connections += 1;
      for (const topic of state.held) topics[topic] = (topics[topic] || 0) + 1;
    }
    return { connections, topics };
  }
  if (command.cmd === "open") {
    const state = { open: true, held: new Set(), handles: new Map() };
    sockets.set(command.sock, state);
    await adapter.open(state);
    return { ok: true };
  }
  const state = sockets.get(command.sock);
  if (command.cmd === "sub") {
    const granted = await adapter.sub(state, command.topic, command.query);
    if (granted) state.held.add(command.topic);
    return { granted };
  }
  if (command.cmd === "unsub") {
    await adapter.unsub(state, command.topic);
    state.held.delete(command.topic);
    return { ok: true };
  }
  if (command.cmd === "close") {
    await adapter.close(state);
    state.open = false;
    return { ok: true };
  }
  throw new Error(`unknown command ${command.cmd}`);
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  run(command).then(
    (answer) => process.stdout.write(`${JSON.stringify({ n: command.n, ...answer })}\n`),
    (error) => process.stdout.write(`${JSON.stringify({ n: command.n, error: String(error) })}\n`),
  );
});
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
