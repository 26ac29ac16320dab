/*
 * Runs the collector dashboard's script under node against a minimal fake DOM,
 * so the test suite can check what it renders without a browser.
 *
 *   node dashboard_dom.js <index.html> <dashboard.js> <summary.json> [page query] [id=value]
 *
 * Elements exist only for the ids and data-testids that index.html declares,
 * so a script that looks up an element the page lacks fails here. Prints one
 * JSON object describing the rendered page (texts, data-values, rows, classes),
 * the requests the script made and the URLs it gave the page. With
 * ``id=value``, the select of that id is then set to the value and changed,
 * as a person would (every fetch answers with the same summary). With
 * DASHBOARD_STALE=<summary.json> in the environment, the first fetch answers
 * that other summary instead, and late (after the choice): an answer to a
 * question the page no longer asks.
 */
"use strict";

const fs = require("fs");
const vm = require("vm");

const [htmlPath, scriptPath, summaryPath, query, choice] = process.argv.slice(2);
const html = fs.readFileSync(htmlPath, "utf8");
const summary = JSON.parse(fs.readFileSync(summaryPath, "utf8"));

class Node {
  constructor(tag, ns) {
    this.tagName = tag.toUpperCase();
    this.namespaceURI = ns || "http://www.w3.org/1999/xhtml";
    this.attributes = {};
    this.children = [];
    this.parentNode = null;
    this._text = "";
    this.listeners = {};
    this.options = [];
    this.value = "";
  }
  setAttribute(name, value) { this.attributes[name] = String(value); }
  removeAttribute(name) { delete this.attributes[name]; }
  getAttribute(name) { return name in this.attributes ? this.attributes[name] : null; }
  appendChild(child) { child.parentNode = this; this.children.push(child); return child; }
  removeChild(child) { this.children = this.children.filter((c) => c !== child); return child; }
  get firstChild() { return this.children[0] || null; }
  get className() { return this.attributes.class || ""; }
  set className(value) { this.attributes.class = value; }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set textContent(value) { this.children = []; this._text = String(value); }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  descendants() { return this.children.flatMap((c) => [c, ...c.descendants()]); }
}

const byId = {};
const byTestId = {};
const tbodies = {};
// Every element the page declares, found by its id and/or data-testid.
for (const match of html.matchAll(/<(\w+)([^>]*)>/g)) {
  const [, tag, attrs] = match;
  const id = /\sid="([^"]+)"/.exec(attrs);
  const testid = /\sdata-testid="([^"]+)"/.exec(attrs);
  if (!id && !testid) continue;
  const node = new Node(tag);
  if (id) byId[id[1]] = node;
  if (testid) byTestId[testid[1]] = node;
  if (tag === "table" && id) tbodies[id[1]] = node.appendChild(new Node("tbody"));
}
const select = byId.days;
for (const option of html.matchAll(/<option value="(\d+)"( selected)?>/g)) {
  select.options.push({ value: option[1] });
  if (option[2]) select.value = option[1];
}

const requests = [];
const document = {
  createElement: (tag) => new Node(tag),
  createElementNS: (ns, tag) => new Node(tag, ns),
  getElementById(id) {
    if (!(id in byId)) throw new Error(`the page has no element #${id}`);
    return byId[id];
  },
  querySelector(selector) {
    let m = /^\[data-testid="([^"]+)"\]$/.exec(selector);
    if (m) {
      if (!(m[1] in byTestId)) throw new Error(`the page has no data-testid ${m[1]}`);
      return byTestId[m[1]];
    }
    m = /^#([\w-]+) tbody$/.exec(selector);
    if (m && m[1] in tbodies) return tbodies[m[1]];
    throw new Error(`unsupported or missing selector ${selector}`);
  },
  listeners: {},
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); },
};
const pageUrls = [];
const window = {
  location: { search: query || "" },
  history: { replaceState(state, title, url) { pageUrls.push(url); } },
};
const stale = process.env.DASHBOARD_STALE
  ? JSON.parse(fs.readFileSync(process.env.DASHBOARD_STALE, "utf8"))
  : null;
function fetch(url, options) {
  requests.push({ url, headers: (options && options.headers) || {} });
  if (stale && requests.length === 1) {
    const answer = { status: 200, ok: true, json: () => Promise.resolve(stale) };
    return new Promise((resolve, reject) => {
      const late = setTimeout(() => resolve(answer), 35);  // after the choice, before the end
      const signal = options && options.signal;
      if (signal) signal.addEventListener("abort", () => { clearTimeout(late); reject(new Error("aborted")); });
    });
  }
  return Promise.resolve({ status: 200, ok: true, json: () => Promise.resolve(summary) });
}

vm.runInNewContext(fs.readFileSync(scriptPath, "utf8"), {
  document, window, fetch, URLSearchParams, Intl, Promise, Math, Number, String, Object, Array, Date,
  parseInt, Error, console, AbortController,
});
document.listeners.DOMContentLoaded.forEach((fn) => fn());

function describe(node) {
  return { text: node.textContent, value: node.getAttribute("data-value"), class: node.className };
}

function hidden(node) {
  return node.getAttribute("hidden") !== null;
}

// A note the page may lack (null then), its text, data-value and whether it is hidden.
function note(node) {
  return node ? { ...describe(node), hidden: hidden(node) } : null;
}

function choose() {
  if (!choice) return;
  const [id, value] = choice.split(/=(.*)/s);
  const target = document.getElementById(id);
  target.value = value;
  (target.listeners.change || []).forEach((fn) => fn({ target }));
}

setTimeout(choose, 20);
setTimeout(() => {
  const all = Object.values(byId).flatMap((n) => n.descendants());
  const withTestid = (id) => all.filter((n) => n.getAttribute("data-testid") === id);
  const rows = (testid) => withTestid(testid).map((row) => ({
    attributes: row.attributes,
    cells: row.children.map((c) => ({ text: c.textContent, value: c.getAttribute("data-value") })),
  }));
  const out = {
    status: { text: byId.status.textContent, state: byId.status.getAttribute("data-state") },
    totals: Object.fromEntries(
      ["deployments", "instances", "requests", "error-rate", "reports"].map((k) => [
        k, describe(byTestId[`total-${k}`]),
      ])
    ),
    endpointRows: rows("endpoint-row"),
    unusedBadges: withTestid("unused-badge").length,
    versionRows: rows("version-endpoint-row"),
    p95Changes: withTestid("p95-change").map((n) => ({ ...describe(n), kind: n.getAttribute("data-kind") })),
    versionBars: withTestid("version-bar").map((n) => ({
      ...n.attributes,
      barClass: n.descendants().find((d) => d.tagName === "RECT").getAttribute("class"),
    })),
    platformBars: withTestid("platform-bar").map((n) => n.attributes),
    activityPaths: byId["activity-chart"].descendants().filter((n) => n.tagName === "PATH").length,
    refusalRows: rows("refusal-row"),
    csvHref: byId["csv-link"].getAttribute("href"),
    appControlHidden: byId["app-control"].getAttribute("hidden") !== null,
    appOptions: byId.app.children.map((n) => ({ value: n.getAttribute("value"), text: n.textContent })),
    appValue: byId.app.value,
    byVersionAppHidden: byId["by-version-app"].getAttribute("hidden") !== null,
    versionApps: withTestid("version-app").map((n) => n.textContent),
    retention: byId.retention.textContent,
    metricsHidden: hidden(byId["app-metrics"]),
    counterRows: rows("counter-row"),
    countersHidden: hidden(byId["metric-counters"]),
    counterAppHidden: hidden(byId["metric-counters-app"]),
    gaugeRows: rows("gauge-row"),
    gaugesHidden: hidden(byId["metric-gauges"]),
    gaugeAppHidden: hidden(byId["metric-gauges-app"]),
    metricsCap: { text: byId["metrics-cap"].textContent, hidden: hidden(byId["metrics-cap"]) },
    dropped: { ...describe(byId.dropped), hidden: hidden(byId.dropped) },
    endpointsCap: note(byId["endpoints-cap"]),
    byVersionCap: note(byId["by-version-cap"]),
    versionsCap: note(byId["versions-cap"]),
    platformsCap: note(byId["platforms-cap"]),
    unusedTitles: withTestid("unused-badge").map((n) => n.getAttribute("title")),
    // Elements the script made, by tag: a name taken for markup would add some.
    tags: [...new Set(all.map((n) => n.tagName))].sort(),
    pageUrls,
    requests,
  };
  process.stdout.write(JSON.stringify(out));
}, 50);
