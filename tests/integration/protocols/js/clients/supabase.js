// @supabase/realtime-js 2 (the Phoenix V2 serializer; broadcasts go as binary frames of
// kinds 3 and 4). A topic given by the test is the channel name; held() lists the
// channels in state "joined" by their wire topic ("realtime:NAME"). Every join also sends a
// broadcast to itself and waits for it to come back, so binary frames cross the sidecar.
"use strict";

const { RealtimeClient } = require("@supabase/realtime-js");

module.exports = ({ url, WebSocket }) => {
  const clients = new Map(); // client -> {realtime, channels: Map(name -> RealtimeChannel)}
  return {
    clients: () => [...clients.keys()],
    held: (client) =>
      [...clients.get(client).channels.values()]
        .filter((channel) => channel.state === "joined").map((channel) => channel.topic),
    open(client) {
      const realtime = new RealtimeClient(url, {
        params: { apikey: "test-key" }, transport: WebSocket,
        reconnectAfterMs: () => 600000, heartbeatIntervalMs: 5000,
      });
      realtime._disconnectOnEmptyChannelsAfterMs = 600000; // keep the socket without channels
      clients.set(client, { realtime, channels: new Map() });
      realtime.connect();
      return new Promise((resolve, reject) => {
        const started = Date.now();
        const check = () => {
          if (realtime.isConnected()) resolve("open");
          else if (Date.now() - started > 15000) reject(new Error("not connected"));
          else setTimeout(check, 20);
        };
        check();
      });
    },
    join(client, name) {
      const entry = clients.get(client);
      const channel = entry.realtime.channel(name, { config: { broadcast: { self: true } } });
      entry.channels.set(name, channel);
      return new Promise((resolve) => {
        channel.on("broadcast", { event: "echo" }, () => resolve("joined"));
        channel.subscribe((status) => {
          if (status === "SUBSCRIBED") {
            channel.send({ type: "broadcast", event: "echo", payload: { from: client } });
          } else if (status === "CHANNEL_ERROR" && entry.channels.get(name) === channel) {
            entry.channels.delete(name);
            entry.realtime.removeChannel(channel);
            resolve("refused");
          }
        });
      });
    },
    async leave(client, name) {
      const entry = clients.get(client);
      const channel = entry.channels.get(name);
      entry.channels.delete(name);
      await entry.realtime.removeChannel(channel);
    },
    serverLeave(client, name) {
      // the test server closes the channel (phx_close) on the broadcast "kick"
      const channel = clients.get(client).channels.get(name);
      return new Promise((resolve) => {
        channel.send({ type: "broadcast", event: "kick", payload: {} });
        const check = () => (channel.state !== "joined" ? resolve("left") : setTimeout(check, 20));
        check();
      });
    },
    stopReconnecting() {},
    forget(client) { clients.delete(client); },
    close(client) {
      const { realtime } = clients.get(client);
      clients.delete(client);
      return realtime.disconnect().then(() => "closed");
    },
  };
};
