// centrifuge-js 5 (JSON protocol over WebSocket). A client named "srv..." connects with the
// token "server-side", for which the test server adds a server-side subscription; held()
// lists the client-side subscriptions in state subscribed and the server-side ones the
// library reported subscribed.
"use strict";

const { Centrifuge } = require("centrifuge");

module.exports = ({ url, WebSocket }) => {
  const clients = new Map(); // client -> {centrifuge, subs: Map(channel -> Subscription), server: Set}
  return {
    clients: () => [...clients.keys()],
    held: (client) => {
      const entry = clients.get(client);
      const own = [...entry.subs].filter(([, sub]) => sub.state === "subscribed").map(([c]) => c);
      return [...own, ...entry.server];
    },
    open(client) {
      const centrifuge = new Centrifuge(url, {
        websocket: WebSocket,
        token: client.startsWith("srv") ? "server-side" : "plain",
        minReconnectDelay: 600000, maxReconnectDelay: 600000,
      });
      const entry = { centrifuge, subs: new Map(), server: new Set() };
      clients.set(client, entry);
      centrifuge.on("subscribed", (ctx) => entry.server.add(ctx.channel));
      centrifuge.on("unsubscribed", (ctx) => entry.server.delete(ctx.channel));
      return new Promise((resolve, reject) => {
        centrifuge.once("connected", () => resolve("open"));
        centrifuge.once("disconnected", (ctx) => reject(new Error(`disconnected ${ctx.reason}`)));
        centrifuge.connect();
      });
    },
    join(client, channel) {
      const entry = clients.get(client);
      const sub = entry.centrifuge.newSubscription(channel);
      entry.subs.set(channel, sub);
      return new Promise((resolve) => {
        sub.once("subscribed", () => resolve("joined"));
        sub.once("unsubscribed", () => {
          entry.centrifuge.removeSubscription(sub);
          entry.subs.delete(channel);
          resolve("refused");
        });
        sub.subscribe();
      });
    },
    async leave(client, channel) {
      const entry = clients.get(client);
      const sub = entry.subs.get(channel);
      entry.subs.delete(channel);
      sub.unsubscribe();
      entry.centrifuge.removeSubscription(sub);
    },
    async serverLeave(client, channel) {
      // the test server answers this RPC with an unsubscribe push for the channel
      const entry = clients.get(client);
      await entry.centrifuge.rpc("unsubscribe_me", { channel });
      return "left";
    },
    stopReconnecting() {},
    forget(client) { clients.delete(client); },
    close(client) {
      const { centrifuge } = clients.get(client);
      clients.delete(client);
      return new Promise((resolve) => {
        centrifuge.once("disconnected", () => resolve("closed"));
        centrifuge.disconnect();
      });
    },
  };
};
