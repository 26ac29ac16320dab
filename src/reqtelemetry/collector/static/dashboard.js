/*
 * reqtelemetry dashboard: fetches api/summary and draws it. No framework, no
 * network beyond this collector, no innerHTML: every value from the reports
 * (routes, versions) comes from clients and is only ever set as text.
 */
"use strict";

(function () {
  var SVG_NS = "http://www.w3.org/2000/svg";
  // A slower release stands out from this change in p95 (relative) onwards.
  var DELTA_THRESHOLD = 0.1;
  var numberFormat = new Intl.NumberFormat("en-US");

  // -- credentials: ?token= on the page is passed on as a bearer token ----------------
  var pageParams = new URLSearchParams(window.location.search);
  var token = pageParams.get("token");
  // The app whose figures are shown (?app= on the page); null: every app.
  var currentApp = pageParams.get("app") || null;

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  // -- small DOM helpers ---------------------------------------------------------------
  // Format characters (Unicode's Cf: bidirectional overrides and isolates,
  // zero-width spaces and joiners, the byte order mark, tag characters) change
  // how the text around them looks without being seen: a sender could make
  // one route read as another, reverse a part of it, or hide text in it.
  // Every text this page shows is drawn with them written out as \u{...}.
  var INVISIBLE = /\p{Cf}/gu;

  function visible(text) {
    return String(text).replace(INVISIBLE, function (character) {
      return "\\u{" + character.codePointAt(0).toString(16).toUpperCase() + "}";
    });
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    if (text !== undefined && text !== null) node.textContent = visible(text);
    return node;
  }

  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    if (text !== undefined && text !== null) node.textContent = visible(text);
    return node;
  }

  // Attributes a person reads (a tooltip); the others (data-*, values) keep
  // the text as it came, for the script's own use.
  var SHOWN_ATTRIBUTES = { title: true, "aria-label": true };

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (name) {
      var value = attrs[name];
      if (value === undefined || value === null) return;
      node.setAttribute(name, SHOWN_ATTRIBUTES[name] === true ? visible(value) : String(value));
    });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function empty(container, message) {
    clear(container);
    container.appendChild(el("p", { class: "empty" }, message));
  }

  // -- formatting ----------------------------------------------------------------------
  function fmtInt(value) {
    return value === null || value === undefined ? "–" : numberFormat.format(value);
  }

  function fmtRate(value) {
    if (value === null || value === undefined) return "–";
    var pct = value * 100;
    if (pct === 0) return "0%";
    if (pct < 0.01) return "<0.01%";
    return (pct < 10 ? pct.toFixed(2) : pct.toFixed(1)) + "%";
  }

  function fmtSeconds(value) {
    if (value === null || value === undefined) return "–";
    var ms = value * 1000;
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 100) return ms.toFixed(0) + " ms";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    return ms.toFixed(2) + " ms";
  }

  function fmtChange(change) {
    var pct = change * 100;
    return (pct > 0 ? "+" : "") + pct.toFixed(0) + "%";
  }

  function fmtTime(seconds, withHour) {
    var date = new Date(seconds * 1000);
    var text = date.toISOString();
    return withHour ? text.slice(5, 13).replace("T", " ") + "h" : text.slice(0, 10);
  }

  function label(value) {
    return value === null || value === undefined || value === "" ? "(unknown)" : String(value);
  }

  // Several apps among these rows: only then is the app worth a label or a column.
  function severalApps(rows) {
    var names = Object.create(null);  // no inherited keys: app names come from clients
    rows.forEach(function (row) { names[label(row.app_name)] = true; });
    return Object.keys(names).length > 1;
  }

  // A table's App column (its heading ``headingId``) only when its rows are of
  // several apps; whether it is shown.
  function appColumn(headingId, rows) {
    var named = severalApps(rows);
    var heading = document.getElementById(headingId);
    if (named) heading.removeAttribute("hidden"); else heading.setAttribute("hidden", "");
    return named;
  }

  // Apps by name, the unnamed (null) last: the order of the selector and the groups.
  function compareApps(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    return a < b ? -1 : 1;
  }

  // -- the order of versions: summary.version_key's twin, rule for rule -------------
  // PEP 440 and SemVer (1.0.dev1 < 1.0a1 < 1.0.0-rc.1 < 1.0 < 1.0.post1), any
  // other string before every version, ties broken by the text. A change
  // there is a change here: tests run one list of versions through both.
  var VERSION_RE = new RegExp(
    "^v?(?:([0-9]+)!)?([0-9]+(?:\\.[0-9]+)*)" +
    "(?:(?:[-_.]?(alpha|a|beta|b|preview|pre|c|rc)[-_.]?([0-9]*))?" +
    "(?:[-_.]?(post|rev|r)[-_.]?([0-9]*))?" +
    "(?:[-_.]?(dev)[-_.]?([0-9]*))?" +
    "|-([0-9a-z]+(?:[.-][0-9a-z]+)*))" +
    "(?:\\+[0-9a-z]+(?:[-_.][0-9a-z]+)*)?$");
  var VERSION_SYNONYMS = { a: "alpha", b: "beta", c: "rc", pre: "rc", preview: "rc", r: "post", rev: "post" };
  // Item ranks: dev < the end of the parts < a number < a word.
  var DEV_ITEM = [0, 0, ""], END_ITEM = [1, 0, ""];
  var PHASE_DEV = 0, PHASE_PRE = 1, PHASE_RELEASE = 2, PHASE_POST = 3;

  // A number as [rank, length, digits]: exact at any size (no 53-bit rounding).
  function numberItem(digits) {
    var significant = digits.replace(/^0+/, "");
    return [2, significant.length, significant];
  }

  function wordItem(word, synonyms) {
    if (!synonyms) return [3, 0, word];
    if (word === "dev") return DEV_ITEM;
    return [3, 0, Object.prototype.hasOwnProperty.call(VERSION_SYNONYMS, word) ? VERSION_SYNONYMS[word] : word];
  }

  function wordsAndNumbers(text, synonyms) {
    return (text.match(/[0-9]+|[a-z]+/g) || []).map(function (part) {
      return /^[0-9]/.test(part) ? numberItem(part) : wordItem(part, synonyms);
    });
  }

  function versionKey(version) {
    version = String(version);
    // Only ASCII letters are folded, as in Python.
    var lowered = version.replace(/[A-Z]+/g, function (upper) { return upper.toLowerCase(); });
    var m = VERSION_RE.exec(lowered);
    if (!m) return [0, wordsAndNumbers(lowered, false), 0, [], version];
    var numbers = m[2].split(".").map(numberItem);
    while (numbers.length && numbers[numbers.length - 1][1] === 0) numbers.pop();  // 1.0 is 1
    var release = [numberItem(m[1] || "0")].concat(numbers);
    var items = [];
    if (m[9] !== undefined) {
      items = wordsAndNumbers(m[9], true);
    } else {
      for (var g = 3; g <= 7; g += 2) {
        if (m[g] !== undefined) items.push(wordItem(m[g], true), numberItem(m[g + 1] || "0"));
      }
    }
    if (!items.length) return [1, release, PHASE_RELEASE, [], version];
    var phase = items[0] === DEV_ITEM ? PHASE_DEV
      : items[0][0] === 3 && items[0][2] === "post" ? PHASE_POST : PHASE_PRE;
    return [1, release, phase, items.concat([END_ITEM]), version];
  }

  // Strings by code points, as Python compares them (not UTF-16 units).
  function compareText(a, b) {
    if (a === b) return 0;
    for (var i = 0; i < a.length && i < b.length; ) {
      var ca = a.codePointAt(i), cb = b.codePointAt(i);
      if (ca !== cb) return ca < cb ? -1 : 1;
      i += ca > 0xffff ? 2 : 1;
    }
    return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
  }

  // Keys as Python compares tuples: element by element, the shorter first.
  function compareKeys(a, b) {
    if (Array.isArray(a)) {
      for (var i = 0; i < a.length && i < b.length; i++) {
        var order = compareKeys(a[i], b[i]);
        if (order) return order;
      }
      return a.length - b.length;
    }
    if (typeof a === "number") return a < b ? -1 : a > b ? 1 : 0;
    return compareText(a, b);
  }

  function compareVersions(a, b) {
    return compareKeys(versionKey(a), versionKey(b));
  }

  // -- charts --------------------------------------------------------------------------
  function niceMax(value) {
    if (value <= 0) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) return steps[i] * power;
    }
    return 10 * power;
  }

  /* A line chart of several series over the same x values. */
  function lineChart(container, points, series, hourly) {
    clear(container);
    if (!points.length) return empty(container, "No reports in this window.");
    var width = 720, height = 220, left = 44, right = 12, top = 24, bottom = 28;
    var innerW = width - left - right, innerH = height - top - bottom;
    var maxValue = 0;
    points.forEach(function (p) {
      series.forEach(function (s) { maxValue = Math.max(maxValue, p[s.key] || 0); });
    });
    // Four grid steps of whole numbers: the series are counts (no "1.3 deployments").
    var yMax = 4 * Math.max(1, niceMax(maxValue / 4));
    var svg = svgEl("svg", { viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": series.map(function (s) { return s.label; }).join(" and ") + " over time" });
    function x(i) { return left + (points.length === 1 ? innerW / 2 : (i * innerW) / (points.length - 1)); }
    function y(v) { return top + innerH - (v / yMax) * innerH; }
    for (var g = 0; g <= 4; g++) {
      var value = (yMax * g) / 4;
      svg.appendChild(svgEl("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
      svg.appendChild(svgEl("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" },
        Number.isInteger(value) ? numberFormat.format(value) : value.toFixed(1)));
    }
    var ticks = points.length <= 3 ? points.map(function (_, i) { return i; })
      : [0, Math.floor((points.length - 1) / 2), points.length - 1];
    ticks.forEach(function (i) {
      // The last date ends at the right edge instead of being cut off there.
      var anchor = points.length > 1 && i === points.length - 1 ? "end" : "middle";
      svg.appendChild(svgEl("text", { x: x(i), y: height - 8, "text-anchor": anchor },
        fmtTime(points[i].bucket_start, hourly)));
    });
    series.forEach(function (s, index) {
      var d = points.map(function (p, i) {
        return (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[s.key] || 0).toFixed(1);
      }).join(" ");
      svg.appendChild(svgEl("path", { class: "series-" + index, d: d }));
      points.forEach(function (p, i) {
        var dot = svgEl("circle", { class: "dot-" + index, cx: x(i), cy: y(p[s.key] || 0), r: 2.5 });
        dot.appendChild(svgEl("title", null,
          fmtTime(p.bucket_start, hourly) + ": " + fmtInt(p[s.key] || 0) + " " + s.label));
        svg.appendChild(dot);
      });
      var lx = left + index * 130;
      svg.appendChild(svgEl("rect", { class: "legend-" + index, x: lx, y: 6, width: 10, height: 10 }));
      svg.appendChild(svgEl("text", { class: "value-label", x: lx + 14, y: 15 }, s.label));
    });
    container.appendChild(svg);
  }

  /* Horizontal bars: rows of {label, value, note, old, testid}. */
  function barChart(container, rows, emptyMessage) {
    clear(container);
    if (!rows.length) return empty(container, emptyMessage || "Nothing reported yet.");
    var rowH = 24, labelW = 140, valueW = 190, width = 560;
    var barW = width - labelW - valueW;
    var height = rows.length * rowH + 4;
    var maxValue = Math.max.apply(null, rows.map(function (r) { return r.value; })) || 1;
    var svg = svgEl("svg", { viewBox: "0 0 " + width + " " + height, role: "img" });
    rows.forEach(function (row, i) {
      var yTop = i * rowH + 2;
      var group = svgEl("g", { "data-testid": row.testid || "bar", "data-label": row.label, "data-value": row.value });
      var name = row.label.length > 20 ? row.label.slice(0, 19) + "…" : row.label;
      group.appendChild(svgEl("text", { x: labelW - 8, y: yTop + 15, "text-anchor": "end", class: "value-label" }, name));
      var w = Math.max(2, (row.value / maxValue) * barW);
      var bar = svgEl("rect", { class: row.old ? "bar old" : "bar", x: labelW, y: yTop + 3, width: w.toFixed(1), height: rowH - 8, rx: 2 });
      bar.appendChild(svgEl("title", null, row.label + ": " + fmtInt(row.value) + (row.note ? " (" + row.note + ")" : "")));
      group.appendChild(bar);
      group.appendChild(svgEl("text", { x: labelW + w + 6, y: yTop + 15 },
        fmtInt(row.value) + (row.note ? "  " + row.note : "")));
      svg.appendChild(group);
    });
    container.appendChild(svg);
  }

  // -- sections ------------------------------------------------------------------------
  function setNumber(testid, value, text) {
    var node = document.querySelector('[data-testid="' + testid + '"]');
    node.textContent = text;
    node.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
  }

  function renderTotals(totals) {
    setNumber("total-deployments", totals.deployments, fmtInt(totals.deployments));
    setNumber("total-instances", totals.instances, fmtInt(totals.instances));
    setNumber("total-requests", totals.requests, fmtInt(totals.requests));
    setNumber("total-error-rate", totals.error_rate, fmtRate(totals.error_rate));
    setNumber("total-reports", totals.reports, fmtInt(totals.reports));
  }

  // Newest version first; with several apps, grouped by app first.
  function compareAppVersions(a, b) {
    var byApp = compareApps(a.app_name, b.app_name);
    if (byApp) return byApp;
    if (a.app_version === null) return b.app_version === null ? 0 : 1;
    if (b.app_version === null) return -1;
    return compareVersions(b.app_version, a.app_version);
  }

  function renderVersions(versions) {
    var sorted = versions.slice().sort(compareAppVersions);
    var named = severalApps(sorted);
    // Each app's newest version stands out: apps number their releases apart.
    var newest = Object.create(null);
    sorted.forEach(function (v) {
      var app = label(v.app_name);
      if (!(app in newest)) newest[app] = v.app_version;
    });
    barChart(document.getElementById("versions-chart"), sorted.map(function (v) {
      return {
        label: (named ? label(v.app_name) + " " : "") + label(v.app_version),
        value: v.deployments || 0,
        note: fmtInt(v.instances) + " inst., last " + (v.last_seen ? fmtTime(v.last_seen, false) : "–"),
        old: v.app_version !== newest[label(v.app_name)],
        testid: "version-bar"
      };
    }), "No versions reported yet.");
  }

  function cell(row, text, attrs) {
    var td = el("td", attrs, text);
    row.appendChild(td);
    return td;
  }

  function renderEndpoints(endpoints) {
    var body = document.querySelector("#endpoints-table tbody");
    clear(body);
    var named = appColumn("endpoints-app", endpoints);
    if (!endpoints.length) {
      var none = el("tr");
      cell(none, "No endpoints reported yet.", { colspan: 11, class: "empty" });
      body.appendChild(none);
      return;
    }
    endpoints.forEach(function (e) {
      var unused = !e.calls;
      var tr = el("tr", { "data-testid": "endpoint-row", "data-method": e.method, "data-route": e.route,
        "data-app": e.app_name, class: unused ? "unused" : null });
      cell(tr, e.method);
      var route = cell(tr, e.route, { class: "route" });
      if (unused) {
        route.appendChild(el("span", { class: "badge", "data-testid": "unused-badge",
          title: e.last_seen ? "last seen " + fmtTime(e.last_seen, false) : null }, "unused"));
      }
      if (named) cell(tr, label(e.app_name), { "data-testid": "endpoint-app" });
      cell(tr, fmtInt(e.calls), { class: "num", "data-testid": "endpoint-calls", "data-value": e.calls });
      cell(tr, fmtInt(e.errors), { class: "num", "data-testid": "endpoint-errors", "data-value": e.errors });
      cell(tr, fmtRate(e.error_rate), { class: "num" + (e.error_rate > 0.05 ? " high-errors" : ""),
        "data-testid": "endpoint-error-rate", "data-value": e.error_rate });
      ["p50", "p95", "p99", "mean"].forEach(function (key) {
        cell(tr, fmtSeconds(e[key]), { class: "num", "data-testid": "endpoint-" + key, "data-value": e[key] });
      });
      cell(tr, fmtInt(e.deployments), { class: "num", "data-testid": "endpoint-deployments", "data-value": e.deployments });
      body.appendChild(tr);
    });
  }

  function renderByVersion(rows) {
    var body = document.querySelector("#by-version-table tbody");
    clear(body);
    var used = rows.filter(function (r) { return r.calls; });
    var named = appColumn("by-version-app", used);
    if (!used.length) {
      var none = el("tr");
      cell(none, "No endpoint calls reported yet.", { colspan: 9, class: "empty" });
      body.appendChild(none);
      return;
    }
    // Grouped by endpoint, then by app, newest version first inside each group.
    used.sort(function (a, b) {
      var ka = a.method + " " + a.route, kb = b.method + " " + b.route;
      if (ka !== kb) return ka < kb ? -1 : 1;
      return compareAppVersions(a, b);
    });
    used.forEach(function (r) {
      var tr = el("tr", { "data-testid": "version-endpoint-row", "data-method": r.method,
        "data-route": r.route, "data-app": r.app_name, "data-version": r.app_version });
      cell(tr, r.method);
      cell(tr, r.route, { class: "route" });
      if (named) cell(tr, label(r.app_name), { "data-testid": "version-app" });
      cell(tr, label(r.app_version));
      cell(tr, fmtInt(r.calls), { class: "num", "data-value": r.calls });
      cell(tr, fmtRate(r.error_rate), { class: "num" + (r.error_rate > 0.05 ? " high-errors" : ""),
        "data-value": r.error_rate });
      cell(tr, fmtSeconds(r.p50), { class: "num", "data-value": r.p50 });
      cell(tr, fmtSeconds(r.p95), { class: "num", "data-testid": "version-p95", "data-value": r.p95 });
      cell(tr, fmtSeconds(r.p99), { class: "num", "data-value": r.p99 });
      var td = cell(tr, "", { class: "num" });
      if (r.p95_change !== null && r.p95_change !== undefined) {
        var kind = r.p95_change >= DELTA_THRESHOLD ? "worse"
          : r.p95_change <= -DELTA_THRESHOLD ? "better" : "same";
        var span = el("span", { class: "delta " + kind, "data-testid": "p95-change",
          "data-value": r.p95_change, "data-kind": kind,
          title: "p95 " + fmtSeconds(r.p95_previous) + " in " + r.previous_version },
          fmtChange(r.p95_change) + " vs " + r.previous_version);
        td.appendChild(span);
      } else {
        td.textContent = "–";
      }
      body.appendChild(tr);
    });
  }

  function plural(count, one, many) {
    return fmtInt(count) + " " + (count === 1 ? one : many);
  }

  /* Says what the collector left out of its endpoint lists (it lists the busiest
     only, however many endpoints were ever stored); "" when nothing was. */
  function endpointsCap(leftOut, limits) {
    var cut = [];
    if (leftOut.used > 0) {
      cut.push(plural(leftOut.used, "more endpoint", "more endpoints") + " not shown (the " +
        fmtInt(limits.used) + " with the most calls are)");
    }
    if (leftOut.unused > 0) {
      cut.push(plural(leftOut.unused, "more unused endpoint", "more unused endpoints") +
        " not shown (the " + fmtInt(limits.unused) + " seen last are)");
    }
    return cut.length ? cut.join("; ") + ". The CSV export has them all." : "";
  }

  function versionsCap(leftOut, limits) {
    if (!(leftOut.by_version > 0)) return "";
    return plural(leftOut.by_version, "more endpoint version", "more endpoint versions") +
      " not shown (of the endpoints above, the " + fmtInt(limits.by_version) +
      " with the most calls are). The CSV export has them all.";
  }

  /* Says how many app versions the collector left out of its list (it lists
     each app's most deployed, however many versions clients named); "" when none. */
  function appVersionsCap(leftOut, limit) {
    if (!(leftOut > 0)) return "";
    return plural(leftOut, "more version", "more versions") + " not shown (the " +
      fmtInt(limit) + " with the most deployments of each app are).";
  }

  /* The same for the platforms, which the charts add up per OS, architecture,
     Python and framework: those left out are in no chart. */
  function platformsCap(leftOut, limit) {
    if (!(leftOut > 0)) return "";
    return plural(leftOut, "more platform", "more platforms") + " not counted (the charts count the " +
      fmtInt(limit) + " combinations of OS, architecture, Python and framework with the most instances).";
  }

  function renderCap(id, text, count) {
    var node = document.getElementById(id);
    node.textContent = text;
    node.setAttribute("data-value", String(count || 0));
    showIf(node, text !== "");
  }

  function renderCaps(leftOut, limits) {
    leftOut = leftOut || {};
    limits = limits || {};
    renderCap("endpoints-cap", endpointsCap(leftOut, limits), (leftOut.used || 0) + (leftOut.unused || 0));
    renderCap("by-version-cap", versionsCap(leftOut, limits), leftOut.by_version);
  }

  function countBy(platforms, key) {
    var counts = Object.create(null);
    platforms.forEach(function (p) {
      var name = label(p[key]);
      var n = p.instances !== undefined ? p.instances : (p.count || 0);
      counts[name] = (counts[name] || 0) + n;
    });
    return Object.keys(counts).map(function (name) {
      return { label: name, value: counts[name], testid: "platform-bar" };
    }).sort(function (a, b) { return b.value - a.value || (a.label < b.label ? -1 : 1); });
  }

  function renderPlatforms(platforms) {
    barChart(document.getElementById("platform-os"), countBy(platforms, "os"));
    barChart(document.getElementById("platform-arch"), countBy(platforms, "arch"));
    barChart(document.getElementById("platform-python"), countBy(platforms, "python_version"));
    barChart(document.getElementById("platform-framework"), countBy(platforms, "framework"));
  }

  function renderRefusals(refusals) {
    var body = document.querySelector("#refusals-table tbody");
    clear(body);
    var reasons = Object.keys(refusals || {}).sort(function (a, b) { return refusals[b] - refusals[a]; });
    if (!reasons.length) {
      var none = el("tr");
      cell(none, "None.", { colspan: 2, class: "empty" });
      body.appendChild(none);
      return;
    }
    reasons.forEach(function (reason) {
      var tr = el("tr", { "data-testid": "refusal-row", "data-reason": reason });
      cell(tr, reason);
      cell(tr, fmtInt(refusals[reason]), { class: "num", "data-value": refusals[reason] });
      body.appendChild(tr);
    });
  }

  // -- app metrics: what the app counted (telemetry.count) and sampled (telemetry.gauge) ----
  function showIf(node, shown) {
    if (shown) node.removeAttribute("hidden"); else node.setAttribute("hidden", "");
  }

  /* Rows of one metrics table: the name (as text: names come from clients),
     the app when the rows are of several, then the ``columns`` as numbers. */
  function renderMetricRows(id, rows, testid, columns) {
    var body = document.querySelector("#" + id + "-table tbody");
    clear(body);
    var named = appColumn(id + "-app", rows);
    rows.forEach(function (m) {
      var tr = el("tr", { "data-testid": testid, "data-name": m.name, "data-app": m.app_name });
      cell(tr, m.name, { class: "route", "data-testid": "metric-name" });
      if (named) cell(tr, label(m.app_name), { "data-testid": "metric-app" });
      columns.forEach(function (key) {
        cell(tr, fmtInt(m[key]), { class: "num", "data-testid": "metric-" + key, "data-value": m[key] });
      });
      body.appendChild(tr);
    });
    showIf(document.getElementById(id), rows.length > 0);
  }

  /* Says when a list was cut: the collector lists the most widely reported names only. */
  function metricsCap(metrics, counters, gauges) {
    var cut = [];
    if ((metrics.counter_names || 0) > counters.length) cut.push(fmtInt(metrics.counter_names) + " counters");
    if ((metrics.gauge_names || 0) > gauges.length) cut.push(fmtInt(metrics.gauge_names) + " gauges");
    return cut.length ? "Of " + cut.join(" and ") + ", the " + fmtInt(metrics.limit) +
      " reported by the most deployments are shown." : "";
  }

  /* The section appears only when the app defined metrics and reported them in the window. */
  function renderMetrics(metrics) {
    metrics = metrics || {};
    var counters = metrics.counters || [], gauges = metrics.gauges || [];
    showIf(document.getElementById("app-metrics"), counters.length + gauges.length > 0);
    renderMetricRows("metric-counters", counters, "counter-row", ["total", "deployments"]);
    renderMetricRows("metric-gauges", gauges, "gauge-row", ["sum", "median", "max", "deployments"]);
    var note = metricsCap(metrics, counters, gauges);
    var cap = document.getElementById("metrics-cap");
    cap.textContent = note;
    showIf(cap, note !== "");
  }

  /* Requests past a client's key cap (max_keys): in the totals, not under their endpoint. */
  function renderDropped(dropped) {
    var node = document.getElementById("dropped");
    var requests = (dropped && dropped.requests) || 0;
    var byApp = (dropped && dropped.by_app) || [];
    var text = fmtInt(requests) + (requests === 1 ? " request" : " requests") +
      " arrived past a client's cap on distinct endpoints (max_keys): counted in the totals," +
      " as _OTHER <overflow>, but not itemised per endpoint.";
    var more = (dropped && dropped.left_out) || 0;
    if (byApp.length > 1) {
      text += " By app: " + byApp.map(function (a) {
        return label(a.app_name) + " " + fmtInt(a.requests);
      }).join(", ") + (more > 0 ? ", and " + plural(more, "more app", "more apps") : "") + ".";
    }
    node.textContent = requests > 0 ? visible(text) : "";
    node.setAttribute("data-value", String(requests));
    showIf(node, requests > 0);
  }

  /* The app selector: shown when there is a choice (several apps, or one chosen). */
  function renderApps(apps, chosen, leftOut) {
    var control = document.getElementById("app-control");
    var select = document.getElementById("app");
    var names = apps.map(function (a) { return a.app_name; })
      .filter(function (name) { return name !== null && name !== undefined && name !== ""; })
      .sort(compareApps);
    // A chosen app without reports in this window stays chosen (and visible).
    if (chosen && names.indexOf(chosen) < 0) names.push(chosen);
    if (apps.length < 2 && !chosen) {
      control.setAttribute("hidden", "");
      return;
    }
    control.removeAttribute("hidden");
    clear(select);
    select.appendChild(el("option", { value: "", "data-testid": "app-option" }, "All apps"));
    names.forEach(function (name) {
      select.appendChild(el("option", { value: name, "data-testid": "app-option" }, name));
    });
    if (leftOut > 0) {  // the list is cut (app names are client text): ?app= reaches the rest
      select.appendChild(el("option", { value: "", disabled: "", "data-testid": "apps-cap" },
        plural(leftOut, "more app", "more apps") + " not listed (choose with ?app=)"));
    }
    select.value = chosen || "";
    select.setAttribute("data-value", chosen || "");
  }

  function render(summary) {
    renderApps(summary.apps || [], summary.app || null, summary.apps_left_out || 0);
    renderTotals(summary.totals || {});
    lineChart(document.getElementById("activity-chart"), summary.activity || [], [
      { key: "deployments", label: "deployments" },
      { key: "instances", label: "instances" }
    ], summary.bucket_seconds < 86400);
    renderVersions(summary.versions || []);
    renderCap("versions-cap", appVersionsCap(summary.versions_left_out, summary.version_limit),
      summary.versions_left_out);
    renderEndpoints(summary.endpoints || []);
    renderByVersion(summary.endpoints_by_version || []);
    renderCaps(summary.endpoints_left_out, summary.endpoint_limits);
    renderPlatforms(summary.platforms || []);
    renderCap("platforms-cap", platformsCap(summary.platforms_left_out, summary.platform_limit),
      summary.platforms_left_out);
    renderRefusals(summary.refusals || {});
    renderMetrics(summary.metrics);
    renderDropped(summary.dropped);
    document.getElementById("generated").textContent =
      "Updated " + new Date(summary.generated_at * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    // A window longer than the retention is not missing data: say why it ends.
    document.getElementById("retention").textContent = summary.retention_days
      ? " · reports older than " + fmtInt(summary.retention_days) + " days are deleted"
      : "";
  }

  // -- loading -------------------------------------------------------------------------
  function query(days) {
    var params = new URLSearchParams({ days: String(days) });
    if (currentApp) params.set("app", currentApp);
    return params;
  }

  function withToken(path, days) {
    var params = query(days);
    if (token) params.set("token", token);
    return path + "?" + params.toString();
  }

  /* The page's own URL keeps the window and the app, so a link or a reload shows the same. */
  function remember(days) {
    var params = new URLSearchParams(window.location.search);
    params.set("days", String(days));
    if (currentApp) params.set("app", currentApp); else params.delete("app");
    window.history.replaceState(null, "", "?" + params.toString());
  }

  function setStatus(text, isError) {
    var status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "status error" : "status";
    status.setAttribute("data-state", isError ? "error" : text ? "loading" : "ready");
  }

  /* The summary asked for last: only its answer is shown. An earlier one still
     under way is aborted (the collector then skips its read if it has not
     begun): on a large database a year's summary answered after the day's
     that replaced it, and the page showed a year's figures under "24 hours". */
  var asked = 0;
  var pending = null;

  function load() {
    var days = document.getElementById("days").value;
    document.getElementById("csv-link").setAttribute("href", withToken("export.csv", days));
    setStatus("Loading…", false);
    var ask = ++asked;
    if (pending) pending.abort();
    pending = typeof AbortController === "function" ? new AbortController() : null;
    var options = { headers: authHeaders(), credentials: "same-origin" };
    if (pending) options.signal = pending.signal;
    fetch("api/summary?" + query(days).toString(), options)
      .then(function (response) {
        if (response.status === 401) throw new Error("Not authorized: open this page with ?token=… or sign in.");
        if (!response.ok) throw new Error("The collector answered " + response.status + ".");
        return response.json();
      })
      .then(function (summary) {
        if (ask !== asked) return;  // a later question replaced this one
        pending = null;
        render(summary);
        setStatus("", false);
      })
      .catch(function (error) {
        if (ask !== asked) return;
        pending = null;
        setStatus(error.message, true);
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var days = pageParams.get("days");
    var select = document.getElementById("days");
    if (days && Array.prototype.some.call(select.options, function (o) { return o.value === days; })) {
      select.value = days;
    }
    select.addEventListener("change", function () {
      remember(select.value);
      load();
    });
    document.getElementById("app").addEventListener("change", function (event) {
      currentApp = event.target.value || null;
      remember(select.value);
      load();
    });
    document.getElementById("refresh").addEventListener("click", load);
    load();
  });
})();
