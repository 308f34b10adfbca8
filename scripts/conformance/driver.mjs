// The conformance suite's driver (run it through scripts/conformance.sh, which also cleans up).
//
// Against the tenant in QLIK_TENANT_URL (API key in QLIK_API_KEY), in the space
// QLIK_CONFORMANCE_SPACE_ID, it creates throwaway data connections with dummy credentials,
// rotates them with the real `qlik-rotator` binary (plan, then rotate), probes the behaviours
// the simulator assumes, and writes a JSON report: every fact with its observed value beside
// the simulator's (scripts/conformance/assumptions.json), `matches: false` where they differ.
//
// All calls go through Qlik's official client @qlik/api (2.19.0, tests/contract), including
// the deliberately invalid PATCH bodies (its types are compile-time only): no curl needed.
//
// Usage: node driver.mjs --report FILE --ledger FILE --work DIR --prefix PREFIX --bin PATH
// Exit: 0 when every step ran (differences from the simulator are findings, not failures);
// 1 when a step failed (creation of the S3 connections, plan/rotate, or an unexpected error);
// the report is written in both cases. Secrets are never printed: the API key and the dummy
// credentials are redacted from everything printed or written.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  CALL,
  addSecret,
  call,
  clean,
  cleanJson,
  connect,
  ledgerAdd,
  rateLimitHeaders,
  redact,
  say,
} from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const tenantUrl = process.env.QLIK_TENANT_URL;
const apiKey = process.env.QLIK_API_KEY;
const space = process.env.QLIK_CONFORMANCE_SPACE_ID;
const { report: reportPath, ledger, work, prefix, bin } = args;
for (const [k, v] of Object.entries({ report: reportPath, ledger, work, prefix, bin })) {
  if (!v) {
    process.stderr.write(`driver: --${k} is required\n`);
    process.exit(2);
  }
}
addSecret(apiKey);

const S3 = "File_AmazonS3ConnectorV2";
const assumptions = JSON.parse(readFileSync(path.join(here, "assumptions.json"), "utf8"));
const facts = {};
const steps = [];
let failed = false;

/** Records a fact; `simulator` defaults to assumptions.json. */
function fact(id, observed, extra = {}) {
  const a = assumptions[id] ?? {};
  const simulator = "simulator" in extra ? extra.simulator : (a.simulator ?? null);
  facts[id] = {
    question: extra.question ?? a.question ?? id,
    observed: cleanJson(observed),
    simulator,
    matches: simulator === null ? null : JSON.stringify(canon(observed)) === JSON.stringify(canon(simulator)),
    confidence: extra.confidence ?? a.confidence ?? "assumed",
    source: extra.source ?? a.source ?? "",
    settles: extra.settles ?? a.settles ?? "",
  };
}

/** Key-sorted copy, so that comparisons ignore key order. */
function canon(v) {
  if (Array.isArray(v)) return v.map(canon);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])]));
  }
  return v;
}

/** Runs a step; an exception is recorded (cleaned) and marks the run failed. */
async function step(name, fn) {
  try {
    await fn();
    steps.push({ step: name, ok: true });
  } catch (e) {
    failed = true;
    steps.push({ step: name, ok: false, error: clean(e?.message ?? e) });
    say(`step ${name} FAILED: ${e?.message ?? e}`);
  }
}

const rand = (n, alphabet) => {
  const bytes = randomBytes(n);
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
};
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const MIXED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/** Dummy AWS-looking key pair (never valid anywhere). */
function dummyS3() {
  const creds = { accessKey: `AKIA${rand(16, UPPER)}`, secretKey: rand(40, MIXED) };
  addSecret(creds.accessKey);
  addSecret(creds.secretKey);
  return creds;
}
function dummyPassword() {
  const p = `pw-${rand(24, MIXED)}`;
  addSecret(p);
  return p;
}

const { dataConnections, dataSources } = await connect(tenantUrl, apiKey);
const created = {}; // label -> {id, name, space}

/** Creates a connection, records it in the ledger at once. */
async function create(label, body) {
  const r = await call(() => dataConnections.createDataConnection(body, CALL));
  if (r.status === 201 && typeof r.data?.qID === "string") {
    const entry = { id: r.data.qID, name: body.qName, space: body.space ?? "" };
    ledgerAdd(ledger, entry);
    created[label] = { ...entry, response: r.data };
    say(`created ${label} (${body.datasourceID ?? body.dataSourceId}) ${r.data.qID}`);
  } else if (r.status === 201) {
    say(`create ${label}: 201 without a qID in the body`);
  } else {
    say(`create ${label}: ${r.status} ${r.error?.code ?? ""} ${r.error?.title ?? ""} ${r.error?.detail ?? ""}`);
  }
  return r;
}

/** GET one by id with parseConnection (no client cache). */
const getOne = (id) => call(() => dataConnections.getDataConnection(id, { parseConnection: true }, CALL));

/** How GET shows each credential property: absent / empty / clear / masked. */
function credentialForms(props, values) {
  const out = {};
  for (const [k, v] of Object.entries(values)) {
    const shown = props?.[k];
    out[k] =
      shown === undefined || shown === null
        ? "absent"
        : shown === ""
          ? "empty"
          : shown === v
            ? "clear"
            : typeof shown === "string"
              ? "masked"
              : `other:${Array.isArray(shown) ? "array" : typeof shown}`;
  }
  return out;
}

/** Runs the real binary; output is kept only redacted. */
function runBinary(argv, timeoutMs = 180_000) {
  return new Promise((resolve) => {
    const child = spawn(bin, argv, {
      env: { ...process.env, QLIK_API_KEY: apiKey, RUST_LOG: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    running = child;
    let stdout = "";
    let stderr = "";
    const cap = (s, d) => (s.length > 200_000 ? s : s + d);
    child.stdout.on("data", (d) => (stdout = cap(stdout, d)));
    child.stderr.on("data", (d) => (stderr = cap(stderr, d)));
    const timer = setTimeout(() => child.kill("SIGTERM"), timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running = null;
      resolve({ code: code ?? (signal ? 128 : 1), stdout: redact(stdout), stderr: redact(stderr) });
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      running = null;
      resolve({ code: 127, stdout: "", stderr: clean(e.message) });
    });
  });
}
let running = null;
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    if (running) running.kill("SIGTERM");
    process.exit(sig === "SIGINT" ? 130 : 143);
  });
}

const lines = (s, n = 20) =>
  s
    .split("\n")
    .filter(Boolean)
    .slice(-n)
    .map((l) => clean(l, 400));

// ----- 1. the catalogue and the tenant's data sources ---------------------------------------

let catalogue = [];
await step("catalogue", async () => {
  const r = await runBinary(["connectors", "--output", "json"], 30_000);
  if (r.code !== 0) throw new Error(`qlik-rotator connectors --output json exited ${r.code}`);
  const doc = JSON.parse(r.stdout);
  if (doc.schema !== "qlik-rotator.connectors/v1" || !Array.isArray(doc.connectors)) {
    throw new Error("connectors --output json is not a qlik-rotator.connectors/v1 document");
  }
  catalogue = doc.connectors;
});

await step("data-sources", async () => {
  const r = await call(() => dataSources.getDataSources({}, CALL));
  if (r.status !== 200) throw new Error(`GET /api/v1/data-sources: ${r.status} ${r.error?.title ?? ""}`);
  const listed = new Set(
    (Array.isArray(r.data?.dataSources) ? r.data.dataSources : [])
      .map((d) => d?.dataSourceId)
      .filter((id) => typeof id === "string"),
  );
  const ours = catalogue.map((c) => c.datasourceID).filter((id) => listed.has(id));
  fact("data_sources.catalogue_listed", {
    listed: ours,
    not_listed: catalogue.map((c) => c.datasourceID).filter((id) => !listed.has(id)),
  });
  const shapes = new Set();
  for (const entry of catalogue.filter((c) => listed.has(c.datasourceID))) {
    const id = entry.datasourceID;
    const s = await call(() => dataSources.getDataSourceApiSpecs(id, CALL));
    const declared = {};
    const expected = {};
    let kind = "error";
    if (s.status === 200) {
      const cp = s.data?.connectionProperties;
      let props = null;
      if (cp && typeof cp === "object" && !Array.isArray(cp) && cp.type === "object" && cp.properties && typeof cp.properties === "object") {
        kind = "json_schema";
        props = cp.properties;
      } else if (Array.isArray(cp)) {
        kind = "array";
        props = Object.fromEntries(cp.filter((p) => typeof p?.name === "string").map((p) => [p.name, p]));
      } else if (cp && typeof cp === "object" && Object.values(cp).every((v) => v && typeof v === "object" && "type" in v)) {
        kind = "flat";
        props = cp;
      } else {
        kind = "other";
      }
      for (const scheme of entry.schemes ?? []) {
        for (const p of scheme.properties ?? []) {
          expected[p.name] = p.type;
          const d = props?.[p.name];
          declared[p.name] = d === undefined ? "absent" : typeof d?.type === "string" ? d.type : "untyped";
        }
      }
    } else {
      kind = `http_${s.status}`;
    }
    shapes.add(kind);
    fact(`api_specs.types.${id}`, { shape: kind, declared }, {
      question: `Declared type of each property the catalogue writes for ${id} (absent = not in the api-specs).`,
      simulator: { shape: "json_schema", declared: expected },
      confidence: "assumed",
      source: "catalogue (src/connectors/catalogue.rs, from qlik-api-facts.md 6); api-specs shape S11",
      settles: `Whether the catalogue's property names and JSON types for ${id} are what the tenant declares.`,
    });
  }
  fact("api_specs.shape", [...shapes].sort());
});

// ----- 2. creation ------------------------------------------------------------------------

const name = (suffix) => `${prefix}-${suffix}`;
const s3Old = { A: dummyS3(), B: dummyS3() };
const s3New = { A: dummyS3(), B: dummyS3() };
const s3Props = (creds) => ({ region: "eu-west-1", bucketName: `${prefix}-bucket`, ...creds });
const CREATE_REQUIRED = [
  "privileges",
  "qArchitecture",
  "qConnectStatement",
  "qEngineObjectID",
  "qID",
  "qLogOn",
  "qName",
  "qSeparateCredentials",
  "qType",
];

await step("create-s3", async () => {
  const a = await create("A", {
    datasourceID: S3,
    qName: name("s3-a"),
    space,
    connectionProperties: s3Props(s3Old.A),
  });
  const b = await create("B", {
    dataSourceId: S3,
    qName: name("s3-b"),
    space,
    connectionProperties: s3Props(s3Old.B),
  });
  const result = (r) => (r.status === 201 ? { status: 201 } : { status: r.status, error: r.error });
  fact(`create.${S3}`, result(a), {
    question: `Can ${S3} be created with dummy keys (no data source reached)?`,
    simulator: { status: 201 },
    confidence: "example",
    source: "S11/S12 S3 v2 example",
    settles: "Which connectors the suite can create on a tenant.",
  });
  fact("create.datasource_id_spelling", { datasourceID: a.status, dataSourceId: b.status });
  if (a.status === 201) {
    const body = a.data ?? {};
    fact("create.response_missing_fields", CREATE_REQUIRED.filter((f) => !(f in body)));
    fact("create.response_qLogOn_type", body.qLogOn === undefined ? "absent" : typeof body.qLogOn);
    fact("create.dcaas_tag", Array.isArray(body.tags) ? body.tags.some((t) => typeof t === "string" && t.startsWith("DcaasAPI:")) : "no tags in the response");
  }
  if (!created.A || !created.B) throw new Error(`the ${S3} connections could not be created (see the create facts)`);
});

await step("create-others", async () => {
  const extras = {
    mssql: {
      host: `${prefix}.invalid`,
      port: "1433",
      database: "conformance",
      username: "conformance",
      password: dummyPassword(),
    },
    rest: {
      url: `https://${prefix}.invalid/`,
      method: "GET",
      authSchema: "basic",
      username: "conformance",
      password: dummyPassword(),
    },
  };
  for (const [id, props] of Object.entries(extras)) {
    const r = await create(id, { datasourceID: id, qName: name(id), space, connectionProperties: props });
    fact(`create.${id}`, r.status === 201 ? { status: 201 } : { status: r.status, error: r.error }, {
      question: `Can ${id} be created with dummy credentials and an unreachable (.invalid) address?`,
      simulator: { status: 201 },
      confidence: "assumed",
      source: "S12 examples; whether creation contacts the data source is undocumented",
      settles: "Which connectors the suite can create without reaching a data source.",
    });
  }
  if (created.A) {
    const dup = await create("duplicate", {
      datasourceID: S3,
      qName: created.A.name,
      space,
      connectionProperties: s3Props(dummyS3()),
    });
    fact("create.duplicate_name", dup.status);
  }
  const missing = await create("missing-name", { datasourceID: S3, space, connectionProperties: s3Props(dummyS3()) });
  fact("create.missing_qName", missing.status);
});

// ----- 3. GET before, plan, rotate, GET after -------------------------------------------------

let before = null;
await step("get-before", async () => {
  if (!created.A) throw new Error("no connection A");
  const r = await getOne(created.A.id);
  if (r.status !== 200) throw new Error(`GET ${created.A.id}: ${r.status}`);
  before = r.data;
  fact("get.credential_properties", credentialForms(r.data?.connectionProperties, s3Old.A));
  const secret = r.data?.qConnectionSecret;
  fact(
    "get.qConnectionSecret",
    secret === undefined || secret === null
      ? "absent"
      : Object.values({ ...s3Old.A }).includes(secret)
        ? "clear"
        : secret === ""
          ? "empty"
          : "present (not a value the suite sent)",
  );
  fact("get.qCredentialsID_present", typeof r.data?.qCredentialsID === "string" && r.data.qCredentialsID !== "");
});

let configPath = null;
await step("config", async () => {
  if (!created.A || !created.B) throw new Error("no connections to rotate");
  const vault = path.join(work, "vault");
  mkdirSync(vault, { recursive: true, mode: 0o700 });
  for (const k of ["A", "B"]) {
    const f = path.join(vault, `s3-${k.toLowerCase()}.json`);
    writeFileSync(f, JSON.stringify(s3New[k]), { mode: 0o600 });
    chmodSync(f, 0o600);
  }
  const q = JSON.stringify;
  configPath = path.join(work, "conformance.toml");
  writeFileSync(
    configPath,
    [
      "# Generated by scripts/conformance/driver.mjs for one conformance run.",
      "[qlik]",
      `tenant_url = ${q(tenantUrl)}`,
      'api_key_env = "QLIK_API_KEY"',
      "max_attempts = 3",
      "",
      "[sources.vault]",
      'type = "file"',
      `path = ${q(vault)}`,
      "",
      "[[jobs]]",
      'name = "conformance-by-id"',
      `connection = { id = ${q(created.A.id)} }`,
      `connector = ${q(S3)}`,
      'source = "vault"',
      'secret = "s3-a"',
      "",
      "[[jobs]]",
      'name = "conformance-by-name"',
      `connection = { name = ${q(created.B.name)}, space = ${q(space)} }`,
      `connector = ${q(S3)}`,
      'source = "vault"',
      'secret = "s3-b"',
      "",
      "[daemon]",
      `state_dir = ${q(path.join(work, "state"))}`,
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
});

await step("plan", async () => {
  if (!configPath) throw new Error("no config");
  const r = await runBinary(["plan", "-c", configPath]);
  fact("plan.exit_code", r.code);
  facts["plan.exit_code"].output = lines(r.stdout, 40);
  if (r.code !== 0) {
    facts["plan.exit_code"].stderr = lines(r.stderr);
    throw new Error(`qlik-rotator plan exited ${r.code}`);
  }
});

await step("rotate", async () => {
  if (!configPath) throw new Error("no config");
  const r = await runBinary(["rotate", "--all", "-c", configPath]);
  fact("rotate.exit_code", r.code);
  const outcomes = ["conformance-by-id", "conformance-by-name"].map((job) => {
    const line = r.stdout.split("\n").find((l) => l.startsWith(`${job}: `)) ?? "";
    const rest = line.slice(job.length + 2);
    return rest.startsWith("rotated and verified") ? "rotated" : (rest.split(" ")[0] || "no output");
  });
  fact("rotate.outcomes", outcomes);
  facts["rotate.exit_code"].output = lines(r.stdout);
  if (r.code !== 0) {
    facts["rotate.exit_code"].stderr = lines(r.stderr);
    throw new Error(`qlik-rotator rotate exited ${r.code}`);
  }
});

await step("get-after", async () => {
  if (!created.A || !before) throw new Error("no connection A");
  const r = await getOne(created.A.id);
  if (r.status !== 200) throw new Error(`GET ${created.A.id}: ${r.status}`);
  const t0 = Date.parse(before.updated);
  const t1 = Date.parse(r.data?.updated);
  fact("patch.updated_advances", Number.isNaN(t0) || Number.isNaN(t1) ? "unparseable" : t1 > t0);
  fact("patch.qCredentialsID_changes", (before.qCredentialsID ?? null) !== (r.data?.qCredentialsID ?? null));
  fact("get.credential_properties_after_rotate", credentialForms(r.data?.connectionProperties, s3New.A));
});

// ----- 4. name lookups ----------------------------------------------------------------------

await step("lookup", async () => {
  if (!created.A) throw new Error("no connection A");
  // The same name in the caller's personal space (no `space`).
  const c = await create("personal-twin", {
    datasourceID: S3,
    qName: created.A.name,
    connectionProperties: s3Props(dummyS3()),
  });
  if (c.status !== 201) throw new Error(`creating the personal-space twin: ${c.status} ${c.error?.title ?? ""}`);
  const amb = await call(() => dataConnections.getDataConnection(created.A.name, { type: "connectionname" }, CALL));
  fact("lookup.ambiguous_name", amb.status);
  const inSpace = await call(() =>
    dataConnections.getDataConnection(created.A.name, { type: "connectionname", spaceId: space }, CALL),
  );
  fact("lookup.by_name_with_space", {
    status: inSpace.status,
    same_connection: inSpace.status === 200 && inSpace.data?.qID === created.A.id,
  });
});

// ----- 5. errors ----------------------------------------------------------------------------

const errorFact = (id, r, withShape) => fact(id, withShape ? { status: r.status, shape: r.shape ?? null } : { status: r.status });
await step("errors", async () => {
  errorFact("errors.get_non_uuid", await call(() => dataConnections.getDataConnection("not-a-uuid", {}, CALL)), true);
  const unknown = "00000000-0000-4000-8000-00000000c0f0";
  errorFact("errors.get_unknown_id", await call(() => dataConnections.getDataConnection(unknown, {}, CALL)), true);
  if (!created.A) throw new Error("no connection A");
  const id = created.A.id;
  const patch = (body) => call(() => dataConnections.patchDataConnection(id, {}, body, CALL));
  errorFact("errors.patch_test_op", await patch([{ op: "test", path: "/qName", value: created.A.name }]));
  errorFact("errors.patch_capital_value", await patch([{ op: "replace", path: "/connectionProperties/region", Value: "eu-west-1" }]));
  errorFact("errors.patch_type_mismatch", await patch([{ op: "replace", path: "/connectionProperties/region", value: 42 }]));
  // Last: if the tenant accepts these, connection A is damaged (it is deleted at the end).
  errorFact("errors.patch_object_value", await patch([{ op: "replace", path: "/connectionProperties/region", value: { conformance: "object" } }]));
});

// ----- 6. delete ----------------------------------------------------------------------------

await step("delete", async () => {
  if (!created.B) throw new Error("no connection B");
  const first = await call(() => dataConnections.deleteDataConnection(created.B.id, {}, CALL));
  const again = await call(() => dataConnections.deleteDataConnection(created.B.id, {}, CALL));
  fact("delete.status", { first: first.status, again: again.status });
});

fact("rate_limit.headers", [...new Set(rateLimitHeaders.map((h) => h.name))].sort());

// ----- report -------------------------------------------------------------------------------

const differ = Object.entries(facts)
  .filter(([, f]) => f.matches === false)
  .map(([id]) => id);
const report = {
  suite: "qlik-rotator conformance",
  generated_at: new Date().toISOString(),
  tenant: clean(new URL(tenantUrl).origin),
  space: clean(space),
  client: "@qlik/api 2.19.0 (tests/contract)",
  run_prefix: prefix,
  ok: !failed,
  steps,
  created: Object.entries(created).map(([label, c]) => ({ label, id: c.id, name: clean(c.name), space: clean(c.space) })),
  summary: {
    facts: Object.keys(facts).length,
    differ_from_simulator: differ,
  },
  facts,
};
writeFileSync(reportPath, `${redact(JSON.stringify(report, null, 2))}\n`);
say(
  `${Object.keys(facts).length} facts recorded, ${differ.length} differ from the simulator${differ.length ? `: ${differ.join(", ")}` : ""}`,
);
say(`report: ${reportPath}`);
if (failed) say(`some steps failed: ${steps.filter((s) => !s.ok).map((s) => s.step).join(", ")}`);
process.exit(failed ? 1 : 0);
