#!/usr/bin/env node
// An asyncipc client in Node.js, over the broker's gRPC adapter (docs/grpc.md).
//
//   asyncipc broker --grpc 127.0.0.1:50051          # in one shell
//   cd examples/node && npm ci && node pubsub.js 127.0.0.1:50051 [PROTO]
//
// It uses nothing but @grpc/grpc-js and @grpc/proto-loader with the service definition
// asyncipc/v1/bus.proto: a long-lived Connect stream that subscribes,
// publishes and answers requests, and the unary Publish and Request calls and the
// server-streaming Subscribe call next to it. $ASYNCIPC_TOKEN is sent as
// `authorization: Bearer <token>` when the broker wants one. Exits 0 when every step
// worked, 1 otherwise.
//
// The .proto is PROTO (the second argument), else $ASYNCIPC_PROTO, else the repository's
// protos/asyncipc/v1/bus.proto when this runs from a checkout. An installed asyncipc
// ships it too; outside the repository (docs/grpc.md, "Clients in other languages"):
//   export ASYNCIPC_PROTO="$(python -c "import importlib.resources as r; \
//     print(r.files('asyncipc') / 'adapters/grpc/proto/asyncipc/v1/bus.proto')")"
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const REPO_PROTO = path.join(__dirname, "..", "..", "protos", "asyncipc", "v1", "bus.proto");
const PROTO = process.argv[3] || process.env.ASYNCIPC_PROTO || REPO_PROTO;
const target = process.argv[2] || process.env.ASYNCIPC_GRPC || "127.0.0.1:50051";
const token = process.env.ASYNCIPC_TOKEN || "";

if (!fs.existsSync(PROTO)) {
  // Copied out of the repository, the example has no protos/ beside it: say where the
  // file comes from rather than fail inside proto-loader.
  console.error(
    `no service definition at ${PROTO}: pass the path of asyncipc/v1/bus.proto as the ` +
      "second argument or in $ASYNCIPC_PROTO (an installed asyncipc ships it, " +
      "see docs/grpc.md)",
  );
  process.exit(1);
}

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, // field names as in the .proto: reply_to, max_frame
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true, // a decoded frame says which one it is in `frame`
});
const { asyncipc } = grpc.loadPackageDefinition(definition);
const bus = new asyncipc.v1.Bus(target, grpc.credentials.createInsecure(), {
  // The broker's messages can be as large as its max_frame (8 MiB by default).
  "grpc.max_receive_message_length": -1,
});

function metadata() {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return md;
}

// A unary call as a promise.
function unary(method, request, deadlineMs = 5000) {
  return new Promise((resolve, reject) => {
    const options = { deadline: Date.now() + deadlineMs };
    bus[method](request, metadata(), options, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

// One Connect stream: frames go out in ConnectRequest batches and come back in
// ConnectResponse batches. Subscriptions and pings carry ids we choose, so that what
// comes back can be matched with what we asked.
class Connection {
  constructor() {
    this.stream = bus.Connect(metadata());
    this.handlers = new Map(); // sid -> function(message)
    this.pongs = new Map(); // ping id -> resolve
    this.nextId = 0;
    this.stream.on("data", (batch) => batch.frames.forEach((f) => this.received(f)));
    this.closed = new Promise((resolve, reject) => {
      this.stream.on("end", resolve);
      this.stream.on("error", reject);
    });
    // Optional, and only first: name ourselves (and carry the token, if any).
    this.send({ hello: { name: "node example", lang: "node", token } });
  }

  send(...frames) {
    this.stream.write({ frames });
  }

  received(f) {
    switch (f.frame) {
      case "welcome":
        this.welcome = f.welcome;
        break;
      case "message": {
        const handler = this.handlers.get(f.message.sid);
        if (handler) handler(f.message);
        break;
      }
      case "ping": // the broker's keep-alive: answer with the same id
        this.send({ pong: { id: f.ping.id } });
        break;
      case "pong": {
        const resolve = this.pongs.get(f.pong.id);
        this.pongs.delete(f.pong.id);
        if (resolve) resolve();
        break;
      }
      case "error":
        console.error(`broker error ${f.error.code}: ${f.error.message}`);
        break;
    }
  }

  // Resolves once the broker has processed everything sent before it.
  flush() {
    const id = ++this.nextId;
    return new Promise((resolve) => {
      this.pongs.set(id, resolve);
      this.send({ ping: { id } });
    });
  }

  subscribe(subject, handler, queue = "") {
    const sid = ++this.nextId;
    this.handlers.set(sid, handler);
    this.send({ subscribe: { sid, subject, queue } });
    return sid;
  }

  publish(subject, data, { headers = {}, reply_to = "" } = {}) {
    this.send({ publish: { subject, data: Buffer.from(data), headers, reply_to } });
  }

  end() {
    this.stream.end();
    return this.closed;
  }
}

async function main() {
  const conn = new Connection();

  // 1. Subscribe on the stream; a unary Publish comes back on it.
  const greeting = new Promise((resolve) => conn.subscribe("greetings.>", resolve));
  await conn.flush(); // the pong: the subscription is in effect
  const w = conn.welcome;
  console.log(`connected to ${w.server} as client ${w.client_id} (max frame ${w.max_frame})`);
  await unary("Publish", {
    subject: "greetings.node",
    data: Buffer.from("hello from node"),
    headers: { lang: "js" },
  });
  const m = await greeting;
  console.log(`stream got [${m.subject}] ${m.data} lang=${m.headers.lang}`);

  // 2. The server-streaming Subscribe call sees what the stream publishes. Its
  //    response headers arrive once the subscription is in effect.
  const news = bus.Subscribe({ subject: "news.*" }, metadata());
  const first = new Promise((resolve, reject) => {
    news.once("data", resolve);
    news.on("error", (err) => (err.code === grpc.status.CANCELLED ? null : reject(err)));
  });
  await new Promise((resolve) => news.once("metadata", resolve));
  conn.publish("news.today", "node publishes on Connect");
  const n = await first;
  console.log(`subscribe got [${n.subject}] ${n.data}`);
  news.cancel();

  // 3. Answer requests on the stream; ask with the unary Request (its deadline is the
  //    request's time-out).
  conn.subscribe("node.upper", (req) => conn.publish(req.reply_to, `${req.data}`.toUpperCase()));
  await conn.flush();
  const reply = await unary("Request", { subject: "node.upper", data: Buffer.from("shout") });
  console.log(`request node.upper -> ${reply.data}`);

  // 4. Status codes say what happened.
  try {
    await unary("Request", { subject: "nobody.home" });
    throw new Error("a request nobody serves was answered");
  } catch (err) {
    if (err.code !== grpc.status.UNAVAILABLE) throw err;
    console.log(`request nobody.home -> ${grpc.status[err.code]}: ${err.details}`);
  }

  await conn.end();
  bus.close();
  console.log("ok");
}

const watchdog = setTimeout(() => {
  console.error(`no answer from ${target} in time`);
  process.exit(1);
}, 20000);
watchdog.unref();

main().catch((err) => {
  console.error(`failed: ${err.stack || err}`);
  process.exit(1);
});
