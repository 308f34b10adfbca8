// Deletes everything a conformance run created: every id in the ledger, then every connection
// whose name starts with the run's unique prefix (a create whose response was lost is still
// found). Run by scripts/conformance.sh from its exit trap, also after a failure or Ctrl-C.
//
// Usage: node cleanup.mjs --ledger FILE --prefix PREFIX   (env QLIK_TENANT_URL, QLIK_API_KEY)
// Exit 0 when nothing the run created is left, 1 otherwise (the ids left are printed).

import { CALL, call, connect, ledgerRead, say } from "./lib.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const prefix = args.prefix ?? "";
if (!/^qlik-rotator-conformance-[0-9a-f]{8}$/.test(prefix)) {
  // The prefix scan deletes by name: refuse anything but the suite's own run prefix.
  process.stderr.write("cleanup: --prefix must be the run's qlik-rotator-conformance-<8 hex> prefix\n");
  process.exit(2);
}
const { dataConnections } = await connect(process.env.QLIK_TENANT_URL, process.env.QLIK_API_KEY);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Deletes one connection; true when it is gone (204, or 404: already gone). */
async function remove(id) {
  for (let attempt = 1; attempt <= 4; attempt++) {
    const r = await call(() => dataConnections.deleteDataConnection(id, {}, CALL));
    if (r.status === 204 || r.status === 404) return true;
    if (r.status !== 0 && r.status !== 429 && r.status < 500) return false;
    await sleep(250 * attempt);
  }
  return false;
}

/** Connections whose name starts with the prefix (all pages, at most 20). */
async function byPrefix() {
  const found = [];
  let r = await call(() =>
    dataConnections.getDataConnections({ filter: `qName sw "${prefix}"`, limit: 100 }, CALL),
  );
  for (let page = 0; page < 20 && r.status === 200; page++) {
    for (const c of r.data?.data ?? []) {
      if (typeof c?.qID === "string" && typeof c?.qName === "string" && c.qName.startsWith(prefix)) {
        found.push(c.qID);
      }
    }
    const next = r.data?.links?.next?.href;
    if (!next) break;
    const url = new URL(next);
    const page = url.searchParams.get("page");
    if (!page) break;
    r = await call(() =>
      dataConnections.getDataConnections({ filter: `qName sw "${prefix}"`, limit: 100, page }, CALL),
    );
  }
  return { ok: r.status === 200, ids: found };
}

const left = new Set();
let deleted = 0;
for (const { id } of ledgerRead(args.ledger ?? "")) {
  if (await remove(id)) deleted++;
  else left.add(id);
}
const scan = await byPrefix();
for (const id of scan.ids) {
  if (left.has(id)) continue;
  if (await remove(id)) deleted++;
  else left.add(id);
}
if (!scan.ok) say("cleanup: could not list connections by name prefix; only the ledger was used");
if (left.size === 0) {
  say(`cleanup: deleted ${deleted} connection(s); nothing the run created is left`);
  process.exit(scan.ok ? 0 : 1);
}
say(`cleanup: FAILED to delete ${left.size} connection(s): ${[...left].join(", ")} (names start with ${prefix})`);
process.exit(1);
