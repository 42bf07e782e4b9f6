// imgsearch web page: vanilla JS, no build step, nothing loaded from elsewhere.
// Talks to the gateway's /v1 endpoints. Image ids are 63-bit, beyond JavaScript's exact
// integers, so they are kept as strings (responses are parsed with ids quoted) and
// "more like this" searches by the hit's URI, which the gateway accepts as `like`.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#393b79", "#637939"];
const state = {
  caps: null, apiKey: sessionStorage.getItem("imgsearch-key") || "", hits: [], query: null, queryLabel: "",
  map: null, graph: null, graphFor: null, jobsTimer: null, detail: null, keyPrompt: null, lastResult: null,
};
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ---- talking to the gateway -------------------------------------------------------------
function parseJson(text) {
  // Quote big integer ids before JSON.parse rounds them to the nearest double.
  return JSON.parse(text.replace(/"(id|source|target)":\s*(-?\d{16,})/g, '"$1":"$2"'));
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = typeof options.json === "string" ? options.json : JSON.stringify(options.json);
  }
  const resp = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  const text = await resp.text();
  let doc = null;
  try { doc = text ? parseJson(text) : null; } catch (_e) { doc = null; }
  if (resp.status === 401 && !options.retried) {
    await askKey();
    return api(path, Object.assign({}, options, { retried: true }));
  }
  if (!resp.ok) {
    const err = doc && doc.error ? doc.error : { code: String(resp.status), message: text.slice(0, 300) };
    throw Object.assign(new Error(err.message), { code: err.code, status: resp.status });
  }
  return doc;
}

function askKey() {
  // One prompt at a time: every request refused meanwhile waits for the same answer.
  if (!state.keyPrompt) {
    state.keyPrompt = new Promise((resolve) => {
      const dialog = $("#key-dialog");
      dialog.addEventListener("close", () => {
        state.apiKey = $("#api-key").value;
        sessionStorage.setItem("imgsearch-key", state.apiKey);
        state.keyPrompt = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return state.keyPrompt;
}

function showError(err) {
  const box = $("#message");
  box.textContent = err ? `${err.code ? err.code + ": " : ""}${err.message}` : "";
  box.hidden = !err;
}

// Thumbnails: a plain <img src> when no key is needed (browser cache, lazy loading);
// with a key, fetched with the header and shown from a blob URL.
function setThumb(img, id, size = 256) {
  const url = `/v1/thumbnails/${id}?size=${size}`;
  img.dataset.thumb = id;
  if (!state.apiKey) { img.src = url; return; }
  fetch(url, { headers: { "X-API-Key": state.apiKey } }).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
    if (!blob || img.dataset.thumb !== String(id)) return;
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);  // the picture it showed before
    img.src = URL.createObjectURL(blob);
  });
}

// ---- search -----------------------------------------------------------------------------
function currentFilters() {
  const out = [];
  for (const row of document.querySelectorAll(".filter-row")) {
    const field = $(".f-field", row).value, op = $(".f-op", row).value, raw = $(".f-value", row).value.trim();
    if (!raw) continue;
    const numeric = (state.caps.filter_fields[field] || []).includes("<");
    let value = raw;
    if (op === "in" || op === "not_in") value = raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (numeric) value = Array.isArray(value) ? value.map(Number) : Number(value);
    out.push({ field, op, value });
  }
  return out;
}

// Channels to ask for, or null for the server's defaults (every box ticked). A text query
// leaves out phash: it compares pixels, and a text query has none.
function currentChannels(kind) {
  const boxes = [...document.querySelectorAll("#channel-list input")];
  if (boxes.every((b) => b.checked)) return null;
  const picked = boxes.filter((b) => b.checked).map((b) => b.value);
  return kind === "text" ? picked.filter((c) => c !== "phash") : picked;
}

function currentMust() {
  if (!state.caps.must) return null;
  const words = $("#must").value.split(",").map((w) => w.trim()).filter(Boolean);
  return words.length ? words : null;
}

function searchOptions(kind) {
  const body = { k: Number($("#k").value), filters: currentFilters() };
  // Only what the user chose is sent, so gateways without channels/must never see them.
  const channels = currentChannels(kind), must = currentMust();
  if (channels) body.channels = channels;
  if (must) body.must = must;
  return body;
}

async function runSearch(query, label) {
  showError(null);
  state.query = query;
  state.queryLabel = label;
  $("#query-info").textContent = `Searching: ${label}…`;
  document.body.dataset.searching = "1";
  try {
    let result;
    if (query.file) {
      const form = new FormData();
      form.append("file", query.file, query.file.name || "pasted-image");
      const opts = searchOptions("image");
      form.append("k", String(opts.k));
      form.append("filters", JSON.stringify(opts.filters));
      if (opts.channels) form.append("channels", opts.channels.join(","));
      if (opts.must) form.append("must", opts.must.join(","));
      result = await api("/v1/search/image", { method: "POST", body: form });
    } else {
      const kind = query.body.text !== undefined ? "text" : "like";
      result = await api("/v1/search", { method: "POST", json: Object.assign(searchOptions(kind), query.body) });
    }
    state.hits = result.hits;
    state.graph = null;
    renderResults(result);
    if (location.hash === "#graph") showGraph();
  } catch (err) {
    showError(err);
    $("#query-info").textContent = `Search failed: ${label}`;
  } finally {
    delete document.body.dataset.searching;
  }
}

// The CLIP similarity of a hit (cosine, from its clip evidence), else its score.
function similarity(hit) {
  const clip = hit.evidence && hit.evidence.clip;
  return clip && typeof clip.score === "number" ? clip.score : hit.score;
}

function renderResults(result) {
  state.lastResult = result;
  const list = $("#results");
  list.replaceChildren();
  const raw = $("#min-score").value.trim();
  const min = raw === "" ? null : Number(raw);
  const shown = min === null || Number.isNaN(min) ? result.hits : result.hits.filter((h) => similarity(h) >= min);
  const hidden = result.hits.length - shown.length;
  $("#query-info").textContent =
    `${shown.length} results for ${state.queryLabel} (${Math.round(result.took_ms)} ms, worker ${result.worker})` +
    (hidden ? `; ${hidden} below the minimum similarity hidden` : "");
  $("#results").dataset.query = state.queryLabel;
  shown.forEach((hit, i) => {
    const img = el("img", { alt: `result ${i + 1}: ${hit.uri}`, width: 150, height: 150,
      loading: i < 100 ? "eager" : "lazy" });
    setThumb(img, hit.id);
    const button = el("button", { type: "button", class: "hit", "data-id": hit.id, "data-uri": hit.uri,
      "aria-label": `Result ${i + 1}, score ${hit.score.toFixed(3)}: ${hit.uri}. More like this.`,
      onclick: () => moreLike(hit) },
    img,
    el("span", { class: "meta" }, el("span", { class: "rank", text: `#${i + 1}` }),
      el("span", { class: "score", text: hit.score.toFixed(3) })),
    el("span", { class: "uri", text: hit.uri }),
    renderEvidence(hit.evidence));
    const info = el("button", { type: "button", class: "info secondary", text: "Details",
      "aria-label": `Details of result ${i + 1}: ${hit.uri}`,
      onclick: () => openDetail(hit, { score: hit.score.toFixed(3) }) });
    list.append(el("li", {}, button, info));
  });
}

function renderEvidence(evidence) {
  if (!evidence || !Object.keys(evidence).length) return null;
  const ul = el("ul", { class: "evidence", "aria-label": "Why it matched" });
  for (const [channel, ev] of Object.entries(evidence)) {
    const parts = [`${channel}`];
    if (ev.rank !== undefined && ev.rank !== null) parts.push(`#${ev.rank}`);
    if (typeof ev.score === "number") parts.push(ev.score.toFixed(3));
    if (typeof ev.coverage === "number") parts.push(`${Math.round(ev.coverage * 100)}% of the words`);
    let line = parts.join(" · ");
    if (ev.text) line += ` — “${ev.text}”${ev.kind ? ` (${ev.kind})` : ""}`;
    ul.append(el("li", { text: line }));
  }
  return ul;
}

function moreLike(hit) {
  closeDetail();
  runSearch({ body: { like: hit.uri } }, `images like ${hit.uri}`);
  if (location.hash !== "#search") location.hash = "#search";
}

function searchFile(file) {
  if (!file || !file.type.startsWith("image/")) { showError({ code: "bad_request", message: "not an image file" }); return; }
  if (location.hash !== "#search") location.hash = "#search";
  runSearch({ file }, `the image ${file.name || "pasted from the clipboard"}`);
}

// ---- filters and channels ---------------------------------------------------------------
function addFilterRow() {
  const fields = Object.keys(state.caps.filter_fields);
  const n = document.querySelectorAll(".filter-row").length + 1;
  const field = el("select", { class: "f-field", id: `f-field-${n}` }, ...fields.map((f) => el("option", { text: f })));
  const op = el("select", { class: "f-op", id: `f-op-${n}` });
  const fillOps = () => op.replaceChildren(...state.caps.filter_fields[field.value].map((o) => el("option", { text: o })));
  field.addEventListener("change", fillOps);
  fillOps();
  const value = el("input", { class: "f-value", id: `f-value-${n}`, type: "text", placeholder: "value (a, b for in)" });
  const row = el("div", { class: "filter-row" },
    el("label", { for: `f-field-${n}`, class: "sr-only", text: `Filter ${n} field` }), field,
    el("label", { for: `f-op-${n}`, class: "sr-only", text: `Filter ${n} operator` }), op,
    el("label", { for: `f-value-${n}`, class: "sr-only", text: `Filter ${n} value` }), value,
    el("button", { type: "button", class: "secondary", text: "Remove", "aria-label": `Remove filter ${n}`,
      onclick: () => row.remove() }));
  $("#filter-rows").append(row);
  field.focus();
}

function renderChannels() {
  const list = $("#channel-list");
  list.replaceChildren(...state.caps.channels.map((c) => el("label", {},
    el("input", { type: "checkbox", value: c, checked: true, disabled: state.caps.channels.length === 1 }), ` ${c}`)));
  $("#must-row").hidden = !state.caps.must;
}

// ---- detail panel and hover preview -----------------------------------------------------
function openDetail(item, fields) {
  state.detail = item;
  const panel = $("#detail");
  setThumb($("#detail-img"), item.id, 512);
  $("#detail-img").alt = item.uri;
  $("#detail-fields").replaceChildren(...Object.entries(Object.assign({ id: item.id, uri: item.uri }, fields))
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  $("#detail-extra").replaceChildren();
  panel.hidden = false;
  $("#detail-like").focus();
  if (state.caps.indexing) loadDetail(item);
}

// What the index holds about an image: metadata, OCR lines, captions, tags, near-duplicates.
async function loadDetail(item) {
  let doc;
  try { doc = await api(`/v1/images/${item.id}`); } catch (err) { if (state.detail === item) showError(err); return; }
  if (state.detail !== item) return;  // another image was opened meanwhile
  const meta = doc.image || {};
  const section = (title, cls, items) => el("section", { class: cls },
    el("h3", { text: title }),
    items.length ? el("ul", {}, ...items) : el("p", { class: "muted small", text: "none" }));
  const texts = (rows) => rows.map((t) => el("li", { text: `${t.text} (${Number(t.confidence).toFixed(2)})` }));
  const near = (doc.near_duplicates || []).map((n) => el("li", {},
    el("button", { type: "button", class: "link", "data-id": n.id, text: `${n.uri} · ${n.distance} bits`,
      onclick: () => openDetail({ id: n.id, uri: n.uri }, { distance: n.distance }) })));
  const fields = ["width", "height", "mime", "bytes", "source", "indexed_at"].filter((k) => meta[k] !== undefined);
  $("#detail-extra").replaceChildren(
    el("dl", { class: "detail-meta" }, ...fields.flatMap((k) => [el("dt", { text: k }), el("dd", { text: String(meta[k]) })])),
    section("Text in the image (OCR)", "detail-ocr", texts(doc.ocr || [])),
    section("Captions", "detail-captions", texts(doc.captions || [])),
    section("Tags", "detail-tags", texts(doc.tags || [])),
    section("Near-duplicates", "detail-near", near));
  $("#detail").dataset.loaded = item.id;
}

async function indexFile(file) {
  if (!file) return;
  const info = $("#index-info");
  info.textContent = `Indexing ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  try {
    const added = await api("/v1/images", { method: "POST", body: form });
    info.textContent = added.searchable ? `Indexed ${file.name} (id ${added.id}): searchable now`
      : `Queued ${file.name} (id ${added.id}) as job ${added.job}: searchable when it is done`;
    info.dataset.id = added.id;
    refreshStats();
  } catch (err) {
    info.textContent = `Not indexed: ${file.name}`;
    showError(err);
  }
}

function closeDetail() {
  $("#detail").hidden = true;
  state.detail = null;
}

function showPreview(evt, item) {
  const box = $("#preview");
  setThumb($("img", box), item.id, 160);
  $("span", box).textContent = item.uri;
  const rect = evt.target.getBoundingClientRect ? evt.target.getBoundingClientRect() : { right: 0, top: 0 };
  const x = evt.clientX || rect.right, y = evt.clientY || rect.top;
  box.style.left = `${Math.min(x + 14, window.innerWidth - 240)}px`;
  box.style.top = `${Math.min(y + 14, window.innerHeight - 230)}px`;
  box.hidden = false;
}

function hidePreview() { $("#preview").hidden = true; }

function svgPoint(svg, item, cx, cy, r, colour, cls, label, fields) {
  const c = el("svg:circle", { cx, cy, r, fill: colour, class: cls, tabindex: 0, role: "button",
    "data-id": item.id, "aria-label": label });
  c.append(el("svg:title", { text: label }));
  c.addEventListener("mouseenter", (e) => showPreview(e, item));
  c.addEventListener("focus", (e) => showPreview(e, item));
  c.addEventListener("mouseleave", hidePreview);
  c.addEventListener("blur", hidePreview);
  const open = () => { hidePreview(); openDetail(item, fields); };
  c.addEventListener("click", open);
  c.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  svg.append(c);
}

function legend(node, entries) {
  node.replaceChildren(...entries.map(([name, colour]) => el("span", { style: `--c:${colour}`, text: name })));
}

// ---- results graph ----------------------------------------------------------------------
async function showGraph() {
  const svg = $("#graph-svg");
  if (!state.hits.length) { svg.replaceChildren(); return; }
  const top = state.hits.slice(0, state.caps.graph_max_nodes ? Math.min(50, state.caps.graph_max_nodes) : 50);
  if (state.graph && state.graphFor === state.queryLabel) return;
  $("#graph-info").textContent = `Computing the graph of the top ${top.length} results for ${state.queryLabel}…`;
  try {
    const ids = top.map((h) => h.id);
    const body = `{"ids":[${ids.join(",")}]}`; // ids are digit strings: sent as exact JSON numbers
    state.graph = await api("/v1/graph", { method: "POST", json: body });
    state.graphFor = state.queryLabel;
  } catch (err) { showError(err); return; }
  const scores = Object.fromEntries(state.hits.map((h, i) => [h.id, [h.score, i + 1]]));
  const g = state.graph;
  const W = 1000, H = 640, pad = 30;
  const pos = Object.fromEntries(g.nodes.map((n) => [n.id, [pad + n.x * (W - 2 * pad), pad + n.y * (H - 2 * pad)]]));
  svg.replaceChildren();
  const weights = g.edges.map((e) => e.weight);
  const lo = Math.min(...weights), hi = Math.max(...weights);
  for (const e of g.edges) {
    const [x1, y1] = pos[e.source], [x2, y2] = pos[e.target];
    const t = (e.weight - lo) / ((hi - lo) || 1);
    svg.append(el("svg:line", { x1, y1, x2, y2, class: "edge", "stroke-width": (0.5 + 4 * t).toFixed(2),
      "stroke-opacity": (0.25 + 0.6 * t).toFixed(2) }));
  }
  for (const n of g.nodes) {
    const [score, rank] = scores[n.id] || [NaN, "?"];
    const label = `#${rank} group ${n.group + 1}, score ${Number(score).toFixed(3)}: ${n.uri}`;
    svgPoint(svg, n, pos[n.id][0].toFixed(1), pos[n.id][1].toFixed(1), 9, PALETTE[n.group % PALETTE.length],
      "node", label, { rank, score: Number(score).toFixed(4), group: n.group + 1 });
  }
  legend($("#graph-legend"), [...Array(g.groups).keys()].map((i) => [`group ${i + 1}`, PALETTE[i % PALETTE.length]]));
  $("#graph-info").textContent =
    `Top ${g.nodes.length} results for ${state.queryLabel}: ${g.groups} k-means groups, ${g.edges.length} similarity edges.`;
}

// ---- collection map ---------------------------------------------------------------------
async function showMap(refresh = false) {
  if (state.map && !refresh) { drawMap(); return; }
  $("#map-info").textContent = "Computing the map (t-SNE; cached until the collection changes)…";
  try {
    state.map = await api(`/v1/map${refresh ? "?refresh=true" : ""}`);
  } catch (err) { showError(err); $("#map-info").textContent = ""; return; }
  drawMap();
}

function drawMap() {
  const m = state.map, svg = $("#map-svg"), by = $("#colour-by").value;
  const W = 1000, H = 640, pad = 20;
  const values = [...new Set(m.points.map((p) => String(p[by])))].sort();
  const colour = Object.fromEntries(values.map((v, i) => [v, PALETTE[i % PALETTE.length]]));
  svg.replaceChildren();
  for (const p of m.points) {
    const label = `${by} ${p[by]}: ${p.uri}`;
    svgPoint(svg, p, (pad + p.x * (W - 2 * pad)).toFixed(1), (pad + p.y * (H - 2 * pad)).toFixed(1), 5,
      colour[String(p[by])], "point", label, { cluster: p.cluster, folder: p.folder, type: p.mime,
        size: `${p.width}×${p.height}` });
  }
  legend($("#map-legend"), values.slice(0, 24).map((v) => [v || "(none)", colour[v]]));
  $("#map-info").textContent = `${m.sampled} of ${m.count} images, ${m.method}, ${m.clusters} clusters` +
    `${m.cached ? " (cached)" : ""}.`;
}

// ---- jobs -------------------------------------------------------------------------------
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function showJobs() {
  let doc;
  try { doc = await api("/v1/jobs"); } catch (err) { showError(err); return; }
  const body = $("#jobs-table tbody");
  body.replaceChildren(...doc.jobs.map((j) => {
    const total = Math.max(j.listed, j.processed);
    const progress = el("progress", { max: total || 1, value: j.processed,
      "aria-label": `job ${j.id}: ${j.processed} of ${total} processed` });
    const failed = j.failed
      ? el("button", { type: "button", class: "secondary", text: `${j.failed} dead letters`,
        onclick: () => showDeadLetters(j.id) })
      : el("span", { text: "0" });
    return el("tr", { "data-job": j.id },
      el("td", { text: j.id }), el("td", { class: "uri", text: j.source }), el("td", { text: j.status }),
      el("td", {}, progress, el("span", { text: ` ${j.processed} / ${total}` })),
      el("td", { text: `${j.rate_per_s.toFixed(1)} /s` }), el("td", { text: fmtSeconds(j.eta_s) }),
      el("td", {}, failed));
  }));
  $("#jobs-info").textContent = doc.jobs.length ? `${doc.jobs.length} jobs, refreshed every 3 s.`
    : "No ingest jobs (run `imgsearch ingest` with IMGSEARCH_REDIS_URL set).";
}

async function showDeadLetters(jobId) {
  let doc;
  try { doc = await api(`/v1/jobs/${encodeURIComponent(jobId)}/dead-letters`); } catch (err) { showError(err); return; }
  const box = $("#dead-letters");
  $("#dead-title").textContent = `Dead letters of job ${jobId}`;
  $("tbody", box).replaceChildren(...doc.dead_letters.map((d) => el("tr", {},
    el("td", { class: "uri", text: d.uri }), el("td", { text: d.reason }), el("td", { text: d.message || "" }),
    el("td", { text: String(d.attempts ?? "") }))));
  box.hidden = false;
}

// ---- views ------------------------------------------------------------------------------
const VIEWS = ["search", "graph", "map", "jobs"];

function route() {
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search";
  for (const v of VIEWS) {
    $(`#view-${v}`).hidden = v !== view;
    const link = $(`#nav-${v}`);
    if (v === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  clearInterval(state.jobsTimer);
  hidePreview();
  if (view === "graph") showGraph();
  if (view === "map") showMap();
  if (view === "jobs") { showJobs(); state.jobsTimer = setInterval(showJobs, 3000); }
}

async function init() {
  try {
    state.caps = await api("/v1/capabilities");
  } catch (err) { showError(err); return; }
  renderChannels();
  $("#add-filter").addEventListener("click", addFilterRow);
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("#q").value.trim();
    if (text) runSearch({ body: { text } }, `“${text}”`);
  });
  $("#upload").addEventListener("change", (e) => searchFile(e.target.files[0]));
  $("#index-row").hidden = !state.caps.indexing;
  $("#index-upload").addEventListener("change", (e) => indexFile(e.target.files[0]));
  $("#min-score").addEventListener("input", () => { if (state.lastResult) renderResults(state.lastResult); });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData || {}).files || []].find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); searchFile(file); }
  });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); searchFile(file); }
  });
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (e.key === "/" && !typing) { e.preventDefault(); location.hash = "#search"; $("#q").focus(); }
    if (e.key === "Escape") { closeDetail(); hidePreview(); }
  });
  $("#detail-like").addEventListener("click", () => { if (state.detail) moreLike(state.detail); });
  $("#detail-close").addEventListener("click", closeDetail);
  $("#colour-by").addEventListener("change", () => state.map && drawMap());
  $("#map-refresh").addEventListener("click", () => showMap(true));
  window.addEventListener("hashchange", route);
  route();
  refreshStats();
  document.body.dataset.ready = "1";
}

function refreshStats() {
  api("/v1/stats").then((s) => {
    $("#collection-info").textContent = `${s.count} images in ${s.collection} · ${s.model}`;
  }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", init);
