// socket.io-client 4 (WebSocket transport only: namespaces connected over long-polling
// before an upgrade are not on the WebSocket wire).
"use strict";

const { Manager } = require("socket.io-client");

module.exports = ({ url }) => {
  const clients = new Map(); // client -> {manager, sockets: Map(namespace -> Socket)}
  return {
    clients: () => [...clients.keys()],
    isOpen: (client) => clients.get(client).manager._readyState === "open",
    held: (client) =>
      [...clients.get(client).sockets].filter(([, socket]) => socket.connected).map(([ns]) => ns),
    open(client) {
      const manager = new Manager(url, {
        transports: ["websocket"], reconnection: false, autoConnect: false,
      });
      clients.set(client, { manager, sockets: new Map() });
      return new Promise((resolve, reject) =>
        manager.open((error) => (error ? reject(error) : resolve("open"))));
    },
    join(client, namespace) {
      const entry = clients.get(client);
      const socket = entry.manager.socket(namespace, { auth: { token: "secret" } });
      entry.sockets.set(namespace, socket);
      return new Promise((resolve) => {
        socket.once("connect", () => resolve("joined"));
        socket.once("connect_error", () => { entry.sockets.delete(namespace); resolve("refused"); });
        socket.connect();
      });
    },
    async leave(client, namespace) {
      const entry = clients.get(client);
      entry.sockets.get(namespace).disconnect();
      entry.sockets.delete(namespace);
    },
    serverLeave(client, namespace) {
      // the test server disconnects the namespace (a DISCONNECT from the server) on "kick"
      const entry = clients.get(client);
      const socket = entry.sockets.get(namespace);
      return new Promise((resolve) => {
        socket.once("disconnect", () => { entry.sockets.delete(namespace); resolve("left"); });
        socket.emit("kick");
      });
    },
    stopReconnecting() {},
    kill(client) {
      clients.get(client).manager.engine.transport.ws.terminate();
    },
    forget(client) { clients.delete(client); },
    close(client) {
      const { manager } = clients.get(client);
      clients.delete(client);
      return new Promise((resolve) => {
        manager.engine.once("close", () => resolve("closed"));
        manager.engine.close();
      });
    },
  };
};
