"""The web page of `meet-milvus serve`: one self-contained HTML document (no build step, no
assets fetched from elsewhere). Kept in a Python string so it ships in the package without
package-data settings. Every text from the gallery or the user goes into the page through
`textContent`, never `innerHTML`.

The access token comes in the link's fragment (`/#token=...`), goes to this tab's
sessionStorage (which no other origin, another port of 127.0.0.1 included, can read) and out of
the address bar; every request sends it as a bearer header, images too (fetched, shown as blob:
URLs). See `meet_milvus.web.auth`."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meet-milvus search</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #d9dee7; --accent: #2458d3; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: #f6f7f9; }
  header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line);
           display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
  header h1 { margin: 0; font-size: 20px; }
  #gallery { color: var(--muted); font-size: 13px; }
  main { max-width: 1180px; margin: 0 auto; padding: 18px 24px 40px; }
  form { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; margin: 0 0 10px; }
  #q { flex: 1 1 420px; padding: 9px 12px; font-size: 16px; border: 1px solid var(--line);
       border-radius: 8px; }
  button { padding: 9px 16px; font-size: 15px; border: 0; border-radius: 8px;
           background: var(--accent); color: #fff; cursor: pointer; }
  .upload { color: var(--muted); }
  #options { display: flex; gap: 14px; flex-wrap: wrap; align-items: center; color: var(--muted);
             font-size: 13px; margin-bottom: 8px; }
  #options input[type=number] { width: 4.5em; }
  #status { color: var(--muted); font-size: 13px; min-height: 1.4em; margin: 6px 0; }
  #error { color: #b42318; background: #fef3f2; border: 1px solid #fecdca; padding: 8px 12px;
           border-radius: 8px; }
  #results.images { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
                    gap: 14px; }
  .card { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 10px;
          padding: 8px; }
  .card img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain;
              background: #fff; }
  .card figcaption { font-size: 12px; margin-top: 6px; overflow-wrap: anywhere; }
  .rank { font-weight: 600; }
  .score { font-variant-numeric: tabular-nums; color: var(--accent); }
  .meta { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
  #query-image { float: left; width: 220px; margin: 0 20px 12px 0; }
  #query-image img { width: 100%; border: 1px solid var(--line); border-radius: 10px;
                     background: #fff; }
  ol.captions { list-style: none; padding: 0; margin: 0; overflow: hidden; }
  ol.captions li { background: #fff; border: 1px solid var(--line); border-radius: 8px;
                   padding: 8px 12px; margin-bottom: 8px; }
  details.stages { font-size: 12px; margin-top: 4px; }
  details.stages table { border-collapse: collapse; }
  details.stages td, details.stages th { padding: 1px 8px 1px 0; text-align: left; }
</style>
</head>
<body>
<header>
  <h1>meet-milvus</h1>
  <span id="gallery">connecting…</span>
</header>
<main>
  <form id="text-form" role="search">
    <input id="q" name="q" type="search" placeholder="describe an image, e.g. a red apple"
           autocomplete="off" autofocus required>
    <button type="submit">Search images</button>
    <label class="upload">or find captions for an image
      <input id="upload" type="file" accept="image/*"></label>
  </form>
  <div id="options">
    <label>results <input id="k" type="number" min="1" max="100" value="10"></label>
    <span>stages:</span>
    <label><input type="checkbox" id="sw-hash" data-switch="hash"> hash</label>
    <label><input type="checkbox" id="sw-pq" data-switch="pq"> PQ</label>
    <label><input type="checkbox" id="sw-exact" data-switch="exact"> exact</label>
    <label><input type="checkbox" id="sw-rerank" data-switch="rerank"> re-rank</label>
    <label><input type="checkbox" id="diagnostics"> per-stage diagnostics</label>
  </div>
  <p id="status" role="status"></p>
  <p id="error" role="alert" hidden></p>
  <figure id="query-image" hidden><img id="query-preview" alt="your image"></figure>
  <section id="results"></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
const TOKEN_KEY = "meet-milvus-token";

function takeToken() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!given) return false;
  sessionStorage.setItem(TOKEN_KEY, given);
  history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  return true;
}
takeToken();
// The link opened in a tab already showing the page changes only the fragment: no reload.
window.addEventListener("hashchange", () => { if (takeToken()) loadInfo(); });

function withToken(init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = new Headers(init.headers || {});
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return {...init, headers};
}

async function showImage(img, url) {
  try {
    const response = await fetch(url, withToken());
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch { /* the card keeps its caption */ }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function switches() {
  const out = {};
  for (const box of document.querySelectorAll("[data-switch]")) {
    out[box.dataset.switch] = box.checked;
  }
  return out;
}

async function call(url, init) {
  const started = performance.now();
  const response = await fetch(url, withToken(init));
  let body;
  try { body = await response.json(); } catch { body = {}; }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  body.roundTrip = performance.now() - started;
  return body;
}

function stagesTable(stages) {
  const table = el("table", {}, el("tr", {}, el("th", {text: "stage"}),
                   el("th", {text: "rank"}), el("th", {text: "score"})));
  for (const [name, s] of Object.entries(stages)) {
    table.append(el("tr", {}, el("td", {text: name}), el("td", {text: s.rank ?? "–"}),
                    el("td", {text: s.score === null ? "–" : s.score.toFixed(4)})));
  }
  return el("details", {class: "stages"}, el("summary", {text: "stages"}), table);
}

function render(result) {
  const box = $("results");
  box.replaceChildren();
  box.className = result.modality === "image" ? "images" : "";
  if (result.modality === "image") {
    for (const hit of result.hits) {
      const caption = el("figcaption", {},
        el("span", {class: "rank", text: `#${hit.rank} `}),
        el("span", {class: "score", text: hit.score.toFixed(4)}),
        el("div", {class: "meta", text: `${hit.external_id} · id ${hit.id}`}));
      if (hit.stages) caption.append(stagesTable(hit.stages));
      const img = el("img", {alt: hit.external_id, title: hit.source});
      showImage(img, hit.thumbnail);
      box.append(el("figure", {class: "card"}, img, caption));
    }
  } else {
    const list = el("ol", {class: "captions"});
    for (const hit of result.hits) {
      const item = el("li", {},
        el("span", {class: "rank", text: `#${hit.rank} `}),
        el("span", {class: "score", text: hit.score.toFixed(4)}), " ",
        el("span", {class: "caption", text: hit.source}),
        el("div", {class: "meta", text: `image ${hit.image} · ${hit.external_id}`}));
      if (hit.stages) item.append(stagesTable(hit.stages));
      list.append(item);
    }
    box.append(list);
  }
  const what = result.modality === "image" ? "images" : "captions";
  const warn = result.warnings.length ? ` · ${result.warnings.join("; ")}` : "";
  $("status").textContent = `${result.hits.length} ${what} for “${result.query}” in ` +
    `${result.ms.toFixed(1)} ms (search) · ${result.roundTrip.toFixed(0)} ms (round trip)${warn}`;
}

async function run(url, init, previewUrl) {
  showError("");
  $("status").textContent = "searching…";
  try {
    const result = await call(url, init);
    $("query-image").hidden = !previewUrl;
    if (previewUrl) $("query-preview").src = previewUrl;
    render(result);
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
}

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value;
  run("/api/search", {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({text, k: Number($("k").value), diagnostics: $("diagnostics").checked,
                          switches: switches()}),
  }, null);
});

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  // Checked here for a quick message; the server checks again (413 / 415).
  if (info && file.size > info.max_upload_bytes) {
    const mb = Math.round(info.max_upload_bytes / 104857.6) / 10;
    showError(`${file.name}: larger than ${mb} MB`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("k", $("k").value);
  form.append("diagnostics", $("diagnostics").checked);
  form.append("switches", JSON.stringify(switches()));
  run("/api/search/image", {method: "POST", body: form}, URL.createObjectURL(file));
  $("upload").value = "";
});

function loadInfo() {
  showError("");
  call("/api/info").then((i) => {
    info = i;
    $("gallery").textContent = `gallery ${i.collection} · model ${i.model}`;
    for (const box of document.querySelectorAll("[data-switch]")) {
      box.checked = Boolean(i.config[box.dataset.switch]);
    }
    $("k").max = i.max_k;
    document.body.dataset.ready = "1";
  }).catch((e) => showError(`the service did not answer: ${e.message}`));
}
loadInfo();
</script>
</body>
</html>
"""
