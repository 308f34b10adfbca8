// Shared plumbing of the conformance suite (scripts/conformance.sh): Qlik's official client
// (@qlik/api, installed by scripts/setup-node.sh into tests/contract/node_modules) behind a
// guarded fetch, secret redaction, and the ledger of what the suite created.
//
// Nothing from the tenant is trusted: responses are size-capped, redirects are refused,
// requests to any other origin are refused, and every string that is printed or written to
// the report goes through `clean()` (secrets replaced, control characters escaped, capped).

import { createRequire } from "node:module";
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");

/** Largest response body read from the tenant (api-specs are the biggest, a few KB). */
export const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Longest string kept in the report or printed. */
export const MAX_TEXT = 300;
/** Per-request timeout. */
export const TIMEOUT_MS = 30_000;

// ----- secrets ---------------------------------------------------------------------------

const secrets = new Set();

/** Registers a value that must never be printed or written (API key, dummy credentials). */
export function addSecret(s) {
  if (typeof s === "string" && s.length >= 4) secrets.add(s);
}

/** Replaces every registered secret in `s` with [REDACTED]. */
export function redact(s) {
  let out = String(s);
  for (const secret of secrets) out = out.split(secret).join("[REDACTED]");
  return out;
}

/** Redacted, control characters escaped, capped: safe to print or store. */
export function clean(s, max = MAX_TEXT) {
  let out = redact(s).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) =>
    `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  if (out.length > max) out = `${out.slice(0, max)}…(${out.length - max} more)`;
  return out;
}

/** Deep copy of a JSON value with every string cleaned (keys too). */
export function cleanJson(v, depth = 0) {
  if (depth > 20) return "[too deep]";
  if (typeof v === "string") return clean(v);
  if (Array.isArray(v)) return v.slice(0, 200).map((x) => cleanJson(x, depth + 1));
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v).slice(0, 500)) out[clean(k, 100)] = cleanJson(x, depth + 1);
    return out;
  }
  return v;
}

/** The JSON type skeleton of a value: `{"errors":[{"code":"string","status":"integer"}]}`. */
export function shape(v, depth = 0) {
  if (depth > 6) return "…";
  if (v === null) return "null";
  if (Array.isArray(v)) return v.length ? [shape(v[0], depth + 1)] : [];
  if (typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v).sort().slice(0, 50)) out[clean(k, 60)] = shape(v[k], depth + 1);
    return out;
  }
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

// ----- the guarded client ----------------------------------------------------------------

/** Rate-limit headers seen on any response: `{name, status, method}`. */
export const rateLimitHeaders = [];
const RATE_LIMIT_HEADER = /^(retry-after|x-ratelimit-.*|x-rate-limit-.*|ratelimit(-.*)?)$/i;

async function readCapped(resp) {
  if (!resp.body) return new Uint8Array();
  const reader = resp.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > MAX_BODY_BYTES) {
      await reader.cancel();
      throw new Error(`response larger than ${MAX_BODY_BYTES} bytes refused`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/**
 * Installs the guarded fetch and configures @qlik/api for `tenantUrl` with `apiKey`.
 * Returns `{dataConnections, dataSources}`.
 */
export async function connect(tenantUrl, apiKey) {
  addSecret(apiKey);
  const origin = new URL(tenantUrl).origin;
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input, init = {}) => {
    const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
    if (url.origin !== origin) throw new Error(`request to another origin refused: ${clean(url.origin)}`);
    const resp = await realFetch(input, { ...init, redirect: "manual" });
    const method = (init.method || "GET").toUpperCase();
    for (const [name] of resp.headers) {
      if (RATE_LIMIT_HEADER.test(name)) rateLimitHeaders.push({ name: name.toLowerCase(), status: resp.status, method });
    }
    if (resp.status >= 300 && resp.status < 400) {
      await resp.body?.cancel();
      throw new Error(`redirect (${resp.status}) refused`);
    }
    const body = await readCapped(resp);
    const nullBody = resp.status === 204 || resp.status === 205 || resp.status === 304;
    return new Response(nullBody ? null : body, {
      status: resp.status,
      statusText: resp.statusText,
      headers: resp.headers,
    });
  };
  const contract = process.env.QLIK_CONFORMANCE_NODE_DIR || path.join(repoRoot, "tests", "contract");
  const pkg = path.join(contract, "package.json");
  if (!existsSync(pkg)) throw new Error(`${pkg} is missing (run scripts/setup-node.sh)`);
  const require = createRequire(pkg);
  const load = async (spec) => (await import(pathToFileURL(require.resolve(spec)).href)).default;
  const { auth } = await import(pathToFileURL(require.resolve("@qlik/api")).href);
  auth.setDefaultHostConfig({ host: origin, authType: "apikey", apiKey });
  return {
    dataConnections: await load("@qlik/api/data-connections"),
    dataSources: await load("@qlik/api/data-sources"),
  };
}

/** Options for every call: no client-side cache (each GET must reach the tenant), a timeout. */
export const CALL = Object.freeze({ noCache: true, timeoutMs: TIMEOUT_MS });

/**
 * Runs an @qlik/api call; never throws. `{status, data, headers}` on success, or
 * `{status, error: {code, title, detail}, shape}` for an HTTP error (status 0: transport).
 */
export async function call(fn) {
  try {
    const r = await fn();
    return { status: r.status, data: r.data, headers: r.headers };
  } catch (e) {
    const status = typeof e?.status === "number" ? e.status : 0;
    const data = e?.data;
    const first = Array.isArray(data?.errors) ? data.errors[0] : undefined;
    return {
      status,
      error: {
        code: first?.code === undefined ? undefined : clean(first.code, 80),
        title: first?.title === undefined ? undefined : clean(first.title, 160),
        detail: first?.detail === undefined ? undefined : clean(first.detail),
        message: status === 0 ? clean(e?.message ?? e) : undefined,
      },
      shape: data && typeof data === "object" ? shape(data) : typeof data,
    };
  }
}

// ----- ledger of created connections -----------------------------------------------------

/** Appends a created connection to the ledger (one JSON object per line). */
export function ledgerAdd(file, entry) {
  appendFileSync(file, `${JSON.stringify(entry)}\n`, { mode: 0o600 });
}

/** The ledger's entries (unparseable lines ignored). */
export function ledgerRead(file) {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .flatMap((l) => {
      try {
        const e = JSON.parse(l);
        return typeof e?.id === "string" ? [e] : [];
      } catch {
        return [];
      }
    });
}

/** Prints one progress line (cleaned) on stdout. */
export function say(msg) {
  process.stdout.write(`conformance: ${clean(msg, 2000)}\n`);
}
