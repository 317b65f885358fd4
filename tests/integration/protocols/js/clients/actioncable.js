// @rails/actioncable 7 in node: the library expects a browser, so it gets the `ws`
// WebSocket and no-op page-visibility hooks. A topic given by the test is the
// subscription's identifier params (an object); held() lists the identifiers the
// library holds confirmed, as their params JSON.
"use strict";

module.exports = ({ url, WebSocket }) => {
  globalThis.addEventListener = () => {};
  globalThis.removeEventListener = () => {};
  globalThis.document = { visibilityState: "visible" };
  const ActionCable = require("@rails/actioncable");
  ActionCable.adapters.WebSocket = WebSocket;
  const clients = new Map(); // client -> {consumer, subscriptions: Map(key -> {subscription, confirmed})}
  const key = (params) => JSON.stringify(params);
  return {
    clients: () => [...clients.keys()],
    held: (client) =>
      [...clients.get(client).subscriptions].filter(([, s]) => s.confirmed).map(([k]) => k),
    open(client) {
      const consumer = ActionCable.createConsumer(url);
      clients.set(client, { consumer, subscriptions: new Map() });
      return new Promise((resolve, reject) => {
        const started = Date.now();
        const check = () => {
          if (consumer.connection.isOpen()) resolve("open");
          else if (Date.now() - started > 15000) reject(new Error("not open"));
          else setTimeout(check, 20);
        };
        consumer.connect();
        check();
      });
    },
    join(client, params) {
      const entry = clients.get(client);
      return new Promise((resolve) => {
        const state = { confirmed: false, subscription: null };
        entry.subscriptions.set(key(params), state);
        state.subscription = entry.consumer.subscriptions.create(params, {
          connected() { state.confirmed = true; resolve("joined"); },
          rejected() { entry.subscriptions.delete(key(params)); resolve("refused"); },
        });
      });
    },
    async leave(client, params) {
      const entry = clients.get(client);
      entry.subscriptions.get(key(params)).subscription.unsubscribe();
      entry.subscriptions.delete(key(params));
    },
    stopReconnecting(client) { clients.get(client).consumer.connection.monitor.stop(); },
    forget(client) { clients.delete(client); },
    close(client) {
      const { consumer } = clients.get(client);
      clients.delete(client);
      const ws = consumer.connection.webSocket;
      return new Promise((resolve) => {
        ws.addEventListener("close", () => resolve("closed"));
        consumer.disconnect();
      });
    },
  };
};
