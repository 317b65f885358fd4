// A small server of the Centrifugo client protocol (v2, JSON): connect (the token
// "server-side" gets a server-side subscription to "personal"), subscribe (channels
// "private..." are refused with error 103), unsubscribe, publish, the RPC "unsubscribe_me"
// (answered with an unsubscribe push for the channel), and pings ({} every 5 s).
// Commands and replies are batched with newlines, as Centrifugo does.
"use strict";

const { WebSocketServer } = require("ws");

const port = Number(process.argv[2]);
const server = new WebSocketServer({ host: "127.0.0.1", port });
let clientNumber = 0;
server.on("connection", (ws) => {
  const subs = new Set();
  const ping = setInterval(() => ws.send("{}"), 5000);
  ws.on("close", () => clearInterval(ping));
  ws.on("message", (data) => {
    const out = [];
    for (const line of data.toString().split("\n")) {
      if (!line.trim()) continue;
      let command;
      try { command = JSON.parse(line); } catch { ws.close(3501, "bad request"); return; }
      const id = command.id;
      if (command.connect) {
        const result = { client: `c${++clientNumber}`, version: "0.0.0-test", ping: 5, pong: false };
        if (command.connect.token === "server-side") {
          result.subs = { personal: {} };
          subs.add("personal");
        }
        out.push({ id, connect: result });
      } else if (command.subscribe) {
        const channel = command.subscribe.channel;
        if (channel.startsWith("private")) {
          out.push({ id, error: { code: 103, message: "permission denied" } });
        } else if (subs.has(channel)) {
          out.push({ id, error: { code: 105, message: "already subscribed" } });
        } else {
          subs.add(channel);
          out.push({ id, subscribe: {} });
          out.push({ push: { channel, pub: { data: { text: "subscribe welcome" } } } });
        }
      } else if (command.unsubscribe) {
        subs.delete(command.unsubscribe.channel);
        out.push({ id, unsubscribe: {} });
      } else if (command.publish) {
        out.push({ id, publish: {} });
        if (subs.has(command.publish.channel)) {
          out.push({ push: { channel: command.publish.channel, pub: { data: command.publish.data } } });
        }
      } else if (command.rpc && command.rpc.method === "unsubscribe_me") {
        const channel = command.rpc.data.channel;
        subs.delete(channel);
        out.push({ push: { channel, unsubscribe: { code: 2000, reason: "server unsubscribe" } } });
        out.push({ id, rpc: { data: {} } });
      }
    }
    if (out.length) ws.send(out.map((item) => JSON.stringify(item)).join("\n"));
  });
});
server.on("listening", () => console.log(`listening ${port}`));
