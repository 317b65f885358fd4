// The app behind the sidecar in the protocol integration tests: a real server library
// where one installs from npm (graphql-ws, aedes), a small test server otherwise (STOMP,
// Pusher). Usage: node server.js PROTOCOL PORT. Prints "listening PORT" when ready.
//
// Refusals the tests rely on: a GraphQL subscription to an unknown field fails
// validation; an MQTT filter starting with "forbidden" is refused (SUBACK 0x80); a STOMP
// destination starting with "/forbidden" gets ERROR and the socket is closed; a Pusher
// channel "private-*" subscribed with auth "bad" gets pusher:subscription_error.
"use strict";

const http = require("http");
const { WebSocketServer } = require("ws");

const [protocol, portText] = process.argv.slice(2);
const port = Number(portText);
const httpServer = http.createServer((request, response) => {
  response.writeHead(404);
  response.end();
});

function listen() {
  httpServer.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
}

// An async iterator that yields one value, then waits until it is returned (completed).
function once(value) {
  let sent = false;
  let wake = null;
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    next() {
      if (!sent) {
        sent = true;
        return Promise.resolve({ value, done: false });
      }
      return new Promise((resolve) => {
        wake = resolve;
      });
    },
    return() {
      if (wake) wake({ value: undefined, done: true });
      return Promise.resolve({ value: undefined, done: true });
    },
  };
}

function graphqlServer() {
  const { buildSchema } = require("graphql");
  const { useServer } = require("graphql-ws/lib/use/ws");
  const schema = buildSchema(`
    type Query { hello: String }
    type Subscription { tick(room: String): Int, greetings: String }
  `);
  const wss = new WebSocketServer({ server: httpServer, path: "/graphql" });
  useServer(
    {
      schema,
      roots: {
        query: { hello: () => "world" },
        subscription: {
          tick: () => once({ tick: 1 }),
          greetings: () => once({ greetings: "hi" }),
        },
      },
    },
    wss,
  );
  listen();
}

function mqttServer() {
  const aedes = require("aedes")({
    authorizeSubscribe(client, subscription, callback) {
      if (subscription.topic.startsWith("forbidden")) {
        callback(null, null); // negated: SUBACK 0x80, the client stays connected
        return;
      }
      callback(null, subscription);
    },
  });
  const websocketStream = require("websocket-stream");
  websocketStream.createServer({ server: httpServer }, aedes.handle);
  listen();
}

function stompFrames(text) {
  const frames = [];
  for (const chunk of text.split("\0")) {
    const trimmed = chunk.replace(/^[\r\n]+/, "");
    if (!trimmed) continue;
    const [head] = trimmed.split(/\r?\n\r?\n/);
    const [command, ...lines] = head.split(/\r?\n/);
    const headers = {};
    for (const line of lines) {
      const at = line.indexOf(":");
      const name = line.slice(0, at);
      if (!(name in headers)) headers[name] = line.slice(at + 1);
    }
    frames.push({ command, headers });
  }
  return frames;
}

function stompFrame(command, headers, body = "") {
  const lines = [command, ...Object.entries(headers).map(([k, v]) => `${k}:${v}`)];
  return `${lines.join("\n")}\n\n${body}\0`;
}

function stompServer() {
  const wss = new WebSocketServer({ server: httpServer });
  let messageId = 0;
  wss.on("connection", (ws) => {
    const subscriptions = new Map();
    ws.on("message", (data) => {
      for (const { command, headers } of stompFrames(data.toString())) {
        if (command === "CONNECT" || command === "STOMP") {
          ws.send(stompFrame("CONNECTED", { version: "1.2", "heart-beat": "0,0" }));
        } else if (command === "SUBSCRIBE") {
          if (headers.destination === undefined) {
            // malformed (the native relay passes it on before the sidecar closes the socket)
            continue;
          }
          if (headers.destination.startsWith("/forbidden")) {
            ws.send(stompFrame("ERROR", { message: "forbidden destination" }, "refused"));
            ws.close();
            return;
          }
          subscriptions.set(headers.id, headers.destination);
          messageId += 1;
          ws.send(
            stompFrame(
              "MESSAGE",
              {
                subscription: headers.id,
                destination: headers.destination,
                "message-id": String(messageId),
                "content-length": "7",
              },
              "welcome",
            ),
          );
        } else if (command === "UNSUBSCRIBE" || command === "DISCONNECT") {
          subscriptions.delete(headers.id);
          if (headers.receipt) ws.send(stompFrame("RECEIPT", { "receipt-id": headers.receipt }));
        }
      }
    });
  });
  listen();
}

function pusherServer() {
  const wss = new WebSocketServer({ server: httpServer });
  let socketId = 0;
  wss.on("connection", (ws) => {
    socketId += 1;
    const send = (message) => ws.send(JSON.stringify(message));
    send({
      event: "pusher:connection_established",
      data: JSON.stringify({ socket_id: `${socketId}.1`, activity_timeout: 120 }),
    });
    ws.on("message", (raw) => {
      let message, data;
      try {
        message = JSON.parse(raw.toString());
        data = typeof message.data === "string" ? JSON.parse(message.data) : message.data;
      } catch {
        return; // malformed (the native relay passes it on before the sidecar closes the socket)
      }
      if (message.event === "pusher:subscribe") {
        const channel = data.channel;
        if (channel.startsWith("private-") && (data.auth || "").endsWith("bad")) {
          send({
            event: "pusher:subscription_error",
            channel,
            data: JSON.stringify({ type: "AuthError", error: "refused", status: 401 }),
          });
          return;
        }
        send({ event: "pusher_internal:subscription_succeeded", channel, data: "{}" });
      } else if (message.event === "pusher:ping") {
        send({ event: "pusher:pong", data: "{}" });
      }
    });
  });
  listen();
}

const servers = { graphql: graphqlServer, mqtt: mqttServer, stomp: stompServer, pusher: pusherServer };
servers[protocol]();
