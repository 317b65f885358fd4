// A small Supabase Realtime server: Phoenix channels with the V2 serializer (JSON arrays),
// topics "realtime:NAME" (names starting with "private" are refused), heartbeats, leaves
// answered with an ok reply and phx_close, and user broadcasts: a client's binary kind-3
// push goes to every member of the topic as a binary kind-4 broadcast. The broadcast event
// "kick" makes the server close that channel (phx_close).
"use strict";

const { WebSocketServer } = require("ws");

const port = Number(process.argv[2]);
const server = new WebSocketServer({ host: "127.0.0.1", port });
const members = new Map(); // topic -> Set(ws)

function send(ws, joinRef, ref, topic, event, payload) {
  ws.send(JSON.stringify([joinRef, ref, topic, event, payload]));
}

function userBroadcast(topic, event, payload) {
  const head = Buffer.from([4, Buffer.byteLength(topic), Buffer.byteLength(event), 0, 1]);
  return Buffer.concat([head, Buffer.from(topic), Buffer.from(event), payload]);
}

server.on("connection", (ws) => {
  const joined = new Map(); // topic -> join_ref
  const leaveAll = () => { for (const topic of joined.keys()) members.get(topic)?.delete(ws); };
  ws.on("close", leaveAll);
  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      const bytes = Buffer.from(data);
      if (bytes[0] !== 3) { ws.close(1003, "unexpected binary kind"); return; }
      const [joinRefSize, refSize, topicSize, eventSize, metaSize] = bytes.subarray(1, 6);
      let offset = 7 + joinRefSize + refSize;
      const topic = bytes.subarray(offset, offset + topicSize).toString(); offset += topicSize;
      const event = bytes.subarray(offset, offset + eventSize).toString(); offset += eventSize;
      const payload = bytes.subarray(offset + metaSize);
      if (event === "kick" && joined.has(topic)) {
        const joinRef = joined.get(topic);
        joined.delete(topic);
        members.get(topic)?.delete(ws);
        send(ws, joinRef, joinRef, topic, "phx_close", {});
        return;
      }
      for (const member of members.get(topic) || []) member.send(userBroadcast(topic, event, payload));
      return;
    }
    let message;
    try { message = JSON.parse(data.toString()); } catch { ws.close(1011, "server error"); return; }
    const [joinRef, ref, topic, event, payload] = message; // Phoenix: the socket process crashes
    if (topic === "phoenix" && event === "heartbeat") {
      send(ws, null, ref, "phoenix", "phx_reply", { status: "ok", response: {} });
    } else if (event === "phx_join") {
      if (topic.startsWith("realtime:private")) {
        send(ws, joinRef, ref, topic, "phx_reply", { status: "error", response: { reason: "Unauthorized" } });
        return;
      }
      joined.set(topic, joinRef);
      if (!members.has(topic)) members.set(topic, new Set());
      members.get(topic).add(ws);
      send(ws, joinRef, ref, topic, "phx_reply", { status: "ok", response: { postgres_changes: [] } });
      send(ws, joinRef, null, topic, "system",
        { status: "ok", message: "Subscribed to Realtime", extension: "broadcast", channel: topic });
    } else if (event === "phx_leave") {
      joined.delete(topic);
      members.get(topic)?.delete(ws);
      send(ws, joinRef, ref, topic, "phx_reply", { status: "ok", response: {} });
      send(ws, joinRef, joinRef, topic, "phx_close", {});
    } else if (ref !== null) {
      send(ws, joinRef, ref, topic, "phx_reply", { status: "ok", response: {} });
    }
  });
});
server.on("listening", () => console.log(`listening ${port}`));
