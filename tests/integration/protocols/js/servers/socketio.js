// A real socket.io 4 server: namespaces "/", "/chat", "/news" accept everyone; "/admin"
// refuses every connection (a middleware error: CONNECT_ERROR on the wire). The event "kick"
// makes the server disconnect that namespace.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const port = Number(process.argv[2]);
const server = http.createServer();
const io = new Server(server, { transports: ["websocket"] });
for (const name of ["/", "/chat", "/news"]) {
  io.of(name).on("connection", (socket) => {
    socket.join("room-" + socket.id); // rooms are server memory only: nothing on the wire
    socket.on("echo", (value, ack) => ack && ack(value));
    socket.on("kick", () => socket.disconnect());
  });
}
io.of("/admin").use((socket, next) => next(new Error("not authorized")));
server.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
