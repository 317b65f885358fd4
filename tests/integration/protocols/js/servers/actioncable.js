// A small Action Cable server (the actioncable-v1-json protocol as Rails speaks it): welcome,
// pings, subscribe -> confirm_subscription (reject_subscription for RejectedChannel), a
// repeated subscribe of a held identifier is ignored (Rails: AlreadySubscribedError),
// unsubscribe, and a broadcast to each new subscription.
"use strict";

const { WebSocketServer } = require("ws");

const port = Number(process.argv[2]);
const server = new WebSocketServer({
  host: "127.0.0.1", port,
  handleProtocols: (offered) => (offered.has("actioncable-v1-json") ? "actioncable-v1-json" : false),
});
server.on("connection", (ws) => {
  const held = new Set();
  ws.send(JSON.stringify({ type: "welcome" }));
  const ping = setInterval(
    () => ws.send(JSON.stringify({ type: "ping", message: Math.floor(Date.now() / 1000) })), 3000);
  ws.on("close", () => clearInterval(ping));
  ws.on("message", (data) => {
    let message;
    try { message = JSON.parse(data); } catch { return; } // Rails logs and carries on
    const identifier = message.identifier;
    if (message.command === "subscribe") {
      if (held.has(identifier)) return;
      const params = JSON.parse(identifier);
      if (params.channel === "RejectedChannel") {
        ws.send(JSON.stringify({ identifier, type: "reject_subscription" }));
        return;
      }
      held.add(identifier);
      ws.send(JSON.stringify({ identifier, type: "confirm_subscription" }));
      ws.send(JSON.stringify({ identifier, message: { text: "welcome to the channel" } }));
    } else if (message.command === "unsubscribe") {
      held.delete(identifier);
    } else if (message.command === "message" && held.has(identifier)) {
      ws.send(JSON.stringify({ identifier, message: JSON.parse(message.data) }));
    }
  });
});
server.on("listening", () => console.log(`listening ${port}`));
