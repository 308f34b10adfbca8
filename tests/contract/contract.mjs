// Contract test: Qlik's official client, @qlik/api (pinned in package.json), against a tenant.
// Every call and type used here comes from the installed .d.ts files (data-connections.d.ts,
// data-sources.d.ts, data-credentials.d.ts, reloads.d.ts of @qlik/api 2.19.0).
//
// Run from tests/contract (so the import resolves) with:
//   QLIK_CONTRACT_URL            base URL, e.g. http://127.0.0.1:8080 (from `qlik-rotator simulate`)
//   QLIK_CONTRACT_API_KEY        API key
//   QLIK_CONTRACT_CONNECTION_ID  a connection the key may read and update
//   QLIK_CONTRACT_CONNECTION_NAME, QLIK_CONTRACT_SPACE_ID   its qName and space
//   QLIK_CONTRACT_DATASOURCE_ID  its datasourceID (must have api-specs)
//   QLIK_CONTRACT_CREDENTIAL_ID  a data credential id
//   QLIK_CONTRACT_PATCH_PROPERTY a non-secret, non-address property of that connection to
//                                replace (default "database")
//   QLIK_CONTRACT_AMBIGUOUS_NAME optional: a qName used in several spaces
//   QLIK_CONTRACT_RELOAD_APP_ID  optional: an app whose reload succeeds (the canary's calls:
//                                reloads.queueReload, then reloads.getReload to a final status)
//   QLIK_CONTRACT_FAILING_APP_ID optional: an app whose reload ends FAILED
//   QLIK_CONTRACT_RELOAD_POLLS   optional: most getReload calls per reload (default 50)
// Prints one JSON line per check ({"check", "ok", "detail"}); exits 1 if any check failed,
// 2 when a variable is missing. Never prints the API key or a connection secret.
import { auth } from "@qlik/api";
import dataConnections from "@qlik/api/data-connections";
import dataSources from "@qlik/api/data-sources";
import dataCredentials from "@qlik/api/data-credentials";
import reloads from "@qlik/api/reloads";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") {
    console.error(`contract: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const url = env("QLIK_CONTRACT_URL");
const apiKey = env("QLIK_CONTRACT_API_KEY");
const id = env("QLIK_CONTRACT_CONNECTION_ID");
const name = env("QLIK_CONTRACT_CONNECTION_NAME");
const spaceId = env("QLIK_CONTRACT_SPACE_ID");
const datasourceId = env("QLIK_CONTRACT_DATASOURCE_ID");
const credentialId = env("QLIK_CONTRACT_CREDENTIAL_ID");
const patchProperty = env("QLIK_CONTRACT_PATCH_PROPERTY", "database");

auth.setDefaultHostConfig({ host: url, authType: "apikey", apiKey });

// `Privilege` in data-connections.d.ts.
const PRIVILEGES = ["list", "update", "delete", "read", "change_owner", "change_space"];
let failed = 0;

function report(check, ok, detail) {
  if (!ok) failed += 1;
  // Details are built from statuses, field names and types only.
  console.log(JSON.stringify({ check, ok, detail }));
}

class Mismatch extends Error {}
function expect(cond, what) {
  if (!cond) throw new Mismatch(what);
}

async function check(name, fn) {
  try {
    report(name, true, (await fn()) ?? "");
  } catch (e) {
    let detail;
    if (e instanceof Mismatch) detail = e.message;
    else if (e && typeof e.status === "number") {
      const err = e.data?.errors?.[0];
      detail = `HTTP ${e.status}${err?.code ? ` ${err.code}` : ""}`;
    } else detail = `${e?.name ?? "Error"}: ${String(e?.message ?? e).slice(0, 200)}`;
    report(name, false, detail);
  }
}

/** Calls `fn`, which must throw an HTTP error with `status`. */
async function expectStatus(status, fn) {
  try {
    const r = await fn();
    throw new Mismatch(`expected HTTP ${status}, got ${r?.status}`);
  } catch (e) {
    if (e instanceof Mismatch) throw e;
    expect(e?.status === status, `expected HTTP ${status}, got ${e?.status ?? e}`);
    const errors = e.data?.errors;
    expect(Array.isArray(errors) && errors.length > 0, "error body has no errors[] (ResponseErrors)");
    for (const err of errors) {
      // `Error` in data-connections.d.ts: every field optional, status a number.
      for (const f of ["code", "detail", "title"]) {
        expect(err[f] === undefined || typeof err[f] === "string", `errors[].${f} is not a string`);
      }
      expect(err.status === undefined || typeof err.status === "number", "errors[].status is not a number");
    }
    return `HTTP ${status}`;
  }
}

const isStr = (v) => typeof v === "string";
const optional = (v, pred) => v === undefined || pred(v);

/** The required and typed fields of `ConnectionGet`. */
function checkConnectionGet(c, where) {
  expect(c && typeof c === "object", `${where}: not an object`);
  for (const f of ["qID", "qEngineObjectID", "qName", "qType", "qConnectStatement", "tenant"]) {
    expect(isStr(c[f]), `${where}: ${f} is not a string`);
  }
  expect(c.qEngineObjectID === c.qID, `${where}: qEngineObjectID differs from qID`);
  expect(isStr(c.links?.self?.href), `${where}: links.self.href missing`);
  expect(Array.isArray(c.privileges) && c.privileges.every((p) => PRIVILEGES.includes(p)),
    `${where}: privileges are not Privilege[]`);
  expect(c.qArchitecture === 0 || c.qArchitecture === 1, `${where}: qArchitecture is not 0|1`);
  expect(c.qLogOn === 0 || c.qLogOn === 1, `${where}: qLogOn is not 0|1`);
  expect(optional(c.qSeparateCredentials, (v) => typeof v === "boolean"), `${where}: qSeparateCredentials`);
  for (const f of ["created", "updated", "datasourceID", "qCredentialsID", "space", "user", "qri", "qConnectionSecret"]) {
    expect(optional(c[f], isStr), `${where}: ${f} is not a string`);
  }
  expect(optional(c.tags, (t) => Array.isArray(t) && t.every(isStr)), `${where}: tags is not string[]`);
}

const noCache = { noCache: true };
let before;

await check("list", async () => {
  const r = await dataConnections.getDataConnections({ limit: 100 }, noCache);
  expect(r.status === 200, `status ${r.status}`);
  const items = r.data.data;
  expect(Array.isArray(items), "data is not an array");
  items.forEach((c, i) => checkConnectionGet(c, `data[${i}]`));
  expect(items.some((c) => c.qID === id), "the connection is not listed");
  expect(items.every((c) => c.qConnectionSecret === undefined), "a list item has qConnectionSecret");
  expect(items.every((c) => c.connectionProperties === undefined), "a list item has connectionProperties");
  expect(optional(r.data.meta?.count, (n) => typeof n === "number"), "meta.count is not a number");
  expect(isStr(r.data.links?.self?.href), "links.self.href missing");
  return `${items.length} connection(s)`;
});

await check("get-by-id", async () => {
  const r = await dataConnections.getDataConnection(id, { parseConnection: true }, noCache);
  expect(r.status === 200, `status ${r.status}`);
  checkConnectionGet(r.data, "connection");
  expect(r.data.qID === id, "qID is not the id asked for");
  const props = r.data.connectionProperties;
  expect(props && typeof props === "object" && !Array.isArray(props), "connectionProperties is not an object");
  before = r.data;
  return `datasourceID ${r.data.datasourceID}, ${Object.keys(props).length} properties`;
});

await check("get-by-name", async () => {
  const r = await dataConnections.getDataConnection(
    name, { type: "connectionname", spaceId, parseConnection: true }, noCache);
  expect(r.status === 200, `status ${r.status}`);
  checkConnectionGet(r.data, "connection");
  expect(r.data.qID === id, "the name resolves to another connection");
  expect(r.data.qName === name, "qName differs");
  return "resolved to the same qID";
});

// Optional: a name shared by connections in several spaces; without spaceId the lookup must
// fail with a status `getDataConnection` declares (400 | 403 | 404 | 500).
const ambiguous = process.env.QLIK_CONTRACT_AMBIGUOUS_NAME;
if (ambiguous) {
  await check("get-ambiguous-name-is-a-declared-error", async () => {
    try {
      const r = await dataConnections.getDataConnection(ambiguous, { type: "connectionname" }, noCache);
      throw new Mismatch(`expected an error, got HTTP ${r.status}`);
    } catch (e) {
      if (e instanceof Mismatch) throw e;
      expect([400, 403, 404, 500].includes(e?.status), `HTTP ${e?.status ?? e} is not a declared GET error`);
      return `HTTP ${e.status}`;
    }
  });
}

await check("patch", async () => {
  expect(before, "no GET by id to compare with");
  const value = `contract-${Date.now()}`;
  const r = await dataConnections.patchDataConnection(id, {}, [
    { op: "replace", path: `/connectionProperties/${patchProperty}`, value },
  ]);
  expect(r.status === 204, `status ${r.status}, not 204`);
  const after = await dataConnections.getDataConnection(id, { parseConnection: true }, noCache);
  expect(after.data.qID === id, "the GET after the PATCH is another connection");
  expect(after.data.connectionProperties?.[patchProperty] === value,
    `GET does not show the new ${patchProperty}`);
  expect(isStr(after.data.updated) && Date.parse(after.data.updated) > Date.parse(before.updated),
    "updated did not advance");
  return `204, GET shows the new ${patchProperty}, updated advanced`;
});

/** A PATCH outside `PatchRequest` must be a 400 that changes nothing (`updated` stays). */
async function rejected(ops) {
  const was = await dataConnections.getDataConnection(id, { parseConnection: true }, noCache);
  const status = await expectStatus(400, () => dataConnections.patchDataConnection(id, {}, ops));
  const now = await dataConnections.getDataConnection(id, { parseConnection: true }, noCache);
  expect(now.data.updated === was.data.updated, "the rejected PATCH changed the connection");
  expect(now.data.connectionProperties?.contractObject === undefined, "the rejected PATCH added a property");
  return `${status}, nothing changed`;
}

// Outside PatchRequest: `op` is "add" | "replace" | "remove" (a test that would pass).
await check("patch-test-op-is-400", () => rejected([{ op: "test", path: "/qName", value: name }]));

// Outside PatchRequest: `value` is string | boolean | number | unknown[] (a new member, so no
// type of an existing value could be what refuses it).
await check("patch-object-value-is-400", () =>
  rejected([{ op: "add", path: "/connectionProperties/contractObject", value: { nested: "x" } }]));

await check("get-unknown-id-is-404", () =>
  expectStatus(404, () =>
    dataConnections.getDataConnection("00000000-0000-4000-8000-000000000000", {}, noCache)));

await check("api-specs", async () => {
  const r = await dataSources.getDataSourceApiSpecs(datasourceId, noCache);
  expect(r.status === 200, `status ${r.status}`);
  // `ApiSpecResponse`; connectionProperties is `unknown` in the type, an object in Qlik's example.
  expect(isStr(r.data.connectorProvider), "connectorProvider is not a string");
  expect(isStr(r.data.connectorVersion), "connectorVersion is not a string");
  const cp = r.data.connectionProperties;
  expect(cp && typeof cp === "object", "connectionProperties is not an object");
  return `connectorVersion ${r.data.connectorVersion}`;
});

await check("data-credential", async () => {
  const r = await dataCredentials.getDataCredential(credentialId, {}, noCache);
  expect(r.status === 200, `status ${r.status}`);
  const c = r.data;
  // `Credential` in data-credentials.d.ts.
  expect(c.qID === credentialId, "qID is not the id asked for");
  expect(isStr(c.qName) && isStr(c.qType), "qName/qType are not strings");
  expect(typeof c.qConnCount === "number", "qConnCount is not a number");
  for (const f of ["created", "updated", "datasourceID", "qReferenceKey"]) {
    expect(optional(c[f], isStr), `${f} is not a string`);
  }
  expect(c.qPassword === undefined && c.qUsername === undefined, "the credential GET returns secrets");
  return `qConnCount ${c.qConnCount}`;
});

// Reloads (the canary's calls). `Reload`, `Status` and `Type` in reloads.d.ts.
const ACTIVE = ["QUEUED", "RELOADING", "CANCELING"];
const FINAL = ["SUCCEEDED", "FAILED", "CANCELED", "EXCEEDED_LIMIT"];
const TYPES = ["hub", "external", "chronos", "automations", "data-refresh", "choreographer"];
const RESOURCE_TYPES = ["api", "reload-tasks", "tasks", "automate"];

/** The required and typed fields of `Reload`, about `appId`. */
function checkReload(r, appId, where) {
  expect(r && typeof r === "object" && !Array.isArray(r), `${where}: not an object`);
  for (const f of ["id", "appId", "creationTime", "tenantId", "userId"]) {
    expect(isStr(r[f]), `${where}: ${f} is not a string`);
  }
  expect(r.appId === appId, `${where}: appId is not the app queued`);
  expect(ACTIVE.includes(r.status) || FINAL.includes(r.status), `${where}: status is not a Status`);
  expect(TYPES.includes(r.type), `${where}: type is not a Type`);
  for (const f of ["endTime", "engineTime", "errorCode", "errorMessage", "log", "startTime", "resourceId"]) {
    expect(optional(r[f], isStr), `${where}: ${f} is not a string`);
  }
  expect(optional(r.partial, (v) => typeof v === "boolean"), `${where}: partial is not a boolean`);
  expect(optional(r.weight, (v) => typeof v === "number"), `${where}: weight is not a number`);
  expect(optional(r.resourceType, (v) => RESOURCE_TYPES.includes(v)), `${where}: resourceType`);
  expect(optional(r.links?.self?.href, isStr), `${where}: links.self.href is not a string`);
  for (const f of ["creationTime", "startTime", "endTime"]) {
    expect(r[f] === undefined || !Number.isNaN(Date.parse(r[f])), `${where}: ${f} is not a date-time`);
  }
}

const maxPolls = Number(process.env.QLIK_CONTRACT_RELOAD_POLLS ?? "50");

/** Queues a reload of `appId` (201, `Reload`), polls `getReload` to a final status. */
async function reloadToEnd(appId) {
  const q = await reloads.queueReload({ appId });
  expect(q.status === 201, `queueReload status ${q.status}, not 201`);
  checkReload(q.data, appId, "queued");
  const reloadId = q.data.id;
  let r = q.data;
  const seen = [r.status];
  for (let i = 0; !FINAL.includes(r.status); i += 1) {
    expect(i < maxPolls, `no final status after ${maxPolls} getReload calls (${seen.join(" > ")})`);
    await new Promise((ok) => setTimeout(ok, 100));
    const g = await reloads.getReload(reloadId, noCache);
    expect(g.status === 200, `getReload status ${g.status}, not 200`);
    checkReload(g.data, appId, "polled");
    expect(g.data.id === reloadId, "getReload answers about another reload");
    r = g.data;
    if (seen[seen.length - 1] !== r.status) seen.push(r.status);
  }
  expect(isStr(r.endTime), "a final reload has no endTime");
  return { r, path: seen.join(" > ") };
}

const reloadApp = process.env.QLIK_CONTRACT_RELOAD_APP_ID;
if (reloadApp) {
  await check("reload-succeeds", async () => {
    const { r, path } = await reloadToEnd(reloadApp);
    expect(r.status === "SUCCEEDED", `ended ${r.status}, not SUCCEEDED`);
    expect(r.errorCode === undefined, "a SUCCEEDED reload has an errorCode");
    return path;
  });
  await check("reload-unknown-app-is-a-declared-error", async () => {
    try {
      const r = await reloads.queueReload({ appId: "00000000-0000-4000-8000-0000000000ff" });
      throw new Mismatch(`expected an error, got HTTP ${r.status}`);
    } catch (e) {
      if (e instanceof Mismatch) throw e;
      expect([400, 401, 403, 429, 500].includes(e?.status), `HTTP ${e?.status ?? e} is not a declared queueReload error`);
      const errors = e.data?.errors;
      expect(Array.isArray(errors) && errors.length > 0, "error body has no errors[] (Errors)");
      return `HTTP ${e.status}`;
    }
  });
  await check("get-unknown-reload-is-404", () =>
    expectStatus(404, () => reloads.getReload("0123456789abcdef01234567", noCache)));
}

const failingApp = process.env.QLIK_CONTRACT_FAILING_APP_ID;
if (failingApp) {
  await check("reload-fails-with-code-and-message", async () => {
    const { r, path } = await reloadToEnd(failingApp);
    expect(r.status === "FAILED", `ended ${r.status}, not FAILED`);
    expect(isStr(r.errorCode) && r.errorCode.length > 0, "a FAILED reload has no errorCode");
    expect(isStr(r.errorMessage) && r.errorMessage.length > 0, "a FAILED reload has no errorMessage");
    return `${path} [${r.errorCode}]`;
  });
}

process.exit(failed === 0 ? 0 : 1);
