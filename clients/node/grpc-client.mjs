// Native gRPC from Node.js: load our .proto files with @grpc/proto-loader, log in through the
// gateway (Envoy) with IamService.Login, then list flows with FlowService.ListFlows, sending the
// JWT as `authorization: Bearer …` metadata.
//
//   node grpc-client.mjs 127.0.0.1:8080 USERNAME        (password on stdin or in $OIH_PASSWORD)
//
// Prints one JSON line: {"principal": …, "flows": [{"name", "display_name", "state"}, …]}.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const [address, username] = process.argv.slice(2);
if (!address || !username) {
  console.error("usage: node grpc-client.mjs HOST:PORT USERNAME  (password on stdin or $OIH_PASSWORD)");
  process.exit(2);
}
const password = process.env.OIH_PASSWORD ?? readFileSync(0, "utf8").trim();

const definition = protoLoader.loadSync(
  ["oih/iam/v1/iam.proto", "oih/flows/v1/flows.proto"],
  {
    // Our protos, and the googleapis ones they import (vendored in third_party/proto);
    // google/protobuf/*.proto come with protobufjs.
    includeDirs: [join(root, "proto"), join(root, "third_party", "proto")],
    keepCase: true, // field names as in the .proto files (display_name)
    enums: String, // enum values by name (STATE_ACTIVE)
    longs: String, // int64 as strings, as in the JSON mapping
    defaults: true,
  },
);
const oih = grpc.loadPackageDefinition(definition).oih;
// h2c to Envoy: REST and native gRPC share the gateway's one listener.
const credentials = grpc.credentials.createInsecure();
const iam = new oih.iam.v1.IamService(address, credentials);
const flows = new oih.flows.v1.FlowService(address, credentials);

function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30_000 }, (error, reply) =>
      error ? reject(error) : resolve(reply));
  });
}

try {
  const token = await call(iam, "Login", { username, password });
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token.access_token}`);
  const me = await call(iam, "GetCurrentPrincipal", {}, metadata);
  const listed = await call(flows, "ListFlows", { page_size: 100 }, metadata);
  console.log(JSON.stringify({
    principal: me.name,
    flows: listed.flows.map(({ name, display_name, state }) => ({ name, display_name, state })),
  }));
} catch (error) {
  // A gRPC status: code and message, one line (the exit code says it failed).
  console.error(`error: ${error.code ?? ""} ${error.details ?? error.message}`);
  process.exit(1);
} finally {
  iam.close();
  flows.close();
}
