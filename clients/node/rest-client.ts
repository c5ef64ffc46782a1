// REST from Node.js with `fetch`, typed from the gateway's OpenAPI document: `npm run types`
// turns gateway/openapi.json into generated/openapi.d.ts (openapi-typescript), and `tsc`
// checks every request body, path and response below against it.
//
//   npx tsx rest-client.ts http://127.0.0.1:8080 USERNAME   (password on stdin or $OIH_PASSWORD)
//
// Prints one JSON line: {"principal": …, "flows": [{"name", "display_name", "state"}, …]}.
import { readFileSync } from "node:fs";
import type { components, paths } from "./generated/openapi.js";

type Schemas = components["schemas"];
type Json<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  responses: { 200: { content: { "application/json": infer T } } };
}
  ? T
  : never;

class ApiError extends Error {
  constructor(readonly status: number, readonly body: Schemas["Error"]) {
    super(`HTTP ${status}: ${body.message}`);
  }
}

async function call<T>(base: string, method: string, path: string, token?: string,
                       body?: unknown): Promise<T> {
  const reply = await fetch(base + path, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const parsed: unknown = await reply.json(); // every answer, errors included, is JSON
  if (!reply.ok) throw new ApiError(reply.status, parsed as Schemas["Error"]);
  return parsed as T;
}

async function main(): Promise<void> {
  const [base, username] = process.argv.slice(2);
  if (!base || !username) {
    console.error("usage: tsx rest-client.ts GATEWAY_URL USERNAME");
    process.exit(2);
  }
  const password = process.env.OIH_PASSWORD ?? readFileSync(0, "utf8").trim();
  const login: Schemas["oih.iam.v1.LoginRequest"] = { username, password };
  const token = await call<Json<"/v1/login", "post">>(base, "POST", "/v1/login", undefined, login);
  const me = await call<Json<"/v1/users/me", "get">>(base, "GET", "/v1/users/me",
                                                     token.access_token);
  const listed = await call<Json<"/v1/flows", "get">>(base, "GET", "/v1/flows?page_size=100",
                                                      token.access_token);
  const flows: Schemas["oih.flows.v1.Flow"][] = listed.flows ?? [];
  console.log(JSON.stringify({
    principal: me.name,
    flows: flows.map(({ name, display_name, state }) => ({ name, display_name, state })),
  }));
}

main().catch((error: unknown) => {
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
