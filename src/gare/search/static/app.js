// gare search page: query box -> GET /api/search -> grid of thumbnail strips; a click plays the video.
"use strict";

const $ = (id) => document.getElementById(id);

function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  const m = Math.floor(s / 60);
  const r = Math.round(s - 60 * m);
  return `${m}:${String(r).padStart(2, "0")}`;
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

function play(hit) {
  const v = $("video");
  v.src = hit.video;
  v.dataset.id = String(hit.id);
  $("playing").textContent = `#${hit.rank}  ${hit.name}  (score ${hit.score.toFixed(3)})`;
  $("player").hidden = false;
  v.play().catch(() => {});  // autoplay may be refused; the controls stay usable
}

function card(hit) {
  const c = document.createElement("article");
  c.className = "card";
  c.tabIndex = 0;
  c.dataset.id = String(hit.id);
  c.dataset.rank = String(hit.rank);
  const img = document.createElement("img");
  img.src = hit.thumb;
  img.alt = `frames of ${hit.name}`;
  img.loading = "lazy";
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `${hit.rank}.`;
  name.append(rank, document.createTextNode(hit.name));
  name.title = hit.name;
  const score = document.createElement("span");
  score.className = "score";
  const dur = fmtDuration(hit.duration);
  score.textContent = `${hit.score.toFixed(3)}${dur ? "  ·  " + dur : ""}`;
  meta.append(name, score);
  c.append(img, meta);
  c.addEventListener("click", () => play(hit));
  c.addEventListener("keydown", (ev) => { if (ev.key === "Enter") play(hit); });
  return c;
}

async function search(q, k) {
  const results = $("results");
  showError("");
  $("status").textContent = "searching…";
  let res, body;
  try {
    res = await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    body = await res.json();
  } catch (err) {
    $("status").textContent = "";
    showError(`the server did not answer (${err})`);
    return;
  }
  if (!res.ok) {
    $("status").textContent = "";
    results.replaceChildren();
    showError(body.error || `error ${res.status}`);
    return;
  }
  results.replaceChildren(...body.results.map(card));
  $("status").textContent = `${body.results.length} result(s) for “${body.query}” in ${body.took_ms} ms`;
  document.body.dataset.state = "done";
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("info").textContent = `${info.videos} videos indexed · model ${info.model.split("/").pop()} · ` +
      `first stage ${info.first_stage}, GARE rerank of the top ${info.rerank_k}`;
  } catch (err) {
    $("info").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value;
    const k = $("k").value;
    history.replaceState(null, "", `?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    search(q, k);
  });
  $("close").addEventListener("click", () => {
    const v = $("video");
    v.pause();
    v.removeAttribute("src");
    v.load();
    $("player").hidden = true;
  });
  const params = new URLSearchParams(location.search);
  if (params.get("q")) {
    $("q").value = params.get("q");
    const k = params.get("k");
    if (k && /^[0-9]+$/.test(k)) {
      if (![...$("k").options].some((o) => o.value === k)) $("k").append(new Option(k, k));
      $("k").value = k;
    }
    search(params.get("q"), $("k").value);
  }
});
