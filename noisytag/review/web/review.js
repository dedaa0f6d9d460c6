// noisytag review page: one card at a time from the review API, decided with the keyboard.
// Every decision is a POST answered after the server has written it to the event log; the page then
// moves on. The queue (mode, class, pair) lives in the address's hash, so a reload continues the same
// queue at its first undecided card.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const S = {
  token: null, classes: [], ids: [], pos: 0, card: null, selected: new Set(), dirty: false,
  shownAt: 0, busy: false, cache: new Map(), query: { mode: "suspect", label: null, pair: null },
};

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function say(message, error = false) {
  const st = $("#status");
  st.textContent = message;
  st.classList.toggle("error", error);
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    body = null;
  }
  if (!res.ok) throw new Error(body && typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Review-Token": S.token },
    body: JSON.stringify(body || {}),
  });
}

// ---- the queue ------------------------------------------------------------------------------------

function readHash(fallback = "suspect") {
  const h = new URLSearchParams(location.hash.slice(1));
  S.query = { mode: h.get("mode") || fallback, label: h.get("label"), pair: h.get("pair") };
}

function writeHash() {
  const h = new URLSearchParams({ mode: S.query.mode });
  if (S.query.mode === "class" && S.query.label) h.set("label", S.query.label);
  if (S.query.mode === "pair" && S.query.pair) h.set("pair", S.query.pair);
  history.replaceState(null, "", `#${h}`);
}

async function loadQueue() {
  const q = new URLSearchParams({ mode: S.query.mode });
  if (S.query.mode === "class") q.set("label", S.query.label || S.classes[0]);
  if (S.query.mode === "pair") {
    if (!S.query.pair) S.query.pair = $("#mode-pair").value;
    if (!S.query.pair) {
      S.ids = [];
      return showEmpty("no label pairs to review");
    }
    q.set("pair", S.query.pair);
  }
  syncControls();
  writeHash();
  const body = await api(`api/queue?${q}`);
  S.ids = body.ids;
  S.cache.clear();
  if (!S.ids.length) return showEmpty("this queue is empty");
  await show(Math.min(body.start, S.ids.length - 1), body.start >= S.ids.length);
}

function showEmpty(message) {
  $("#card").dataset.state = "empty";
  $("#card").dataset.clipId = "";
  say(message);
}

function cardJson(id) {
  if (!S.cache.has(id)) {
    const p = api(`api/card/${id}`);
    p.catch(() => S.cache.delete(id));
    S.cache.set(id, p);
  }
  return S.cache.get(id);
}

async function show(pos, allDone = false) {
  if (!S.ids.length) return;
  pos = Math.max(0, Math.min(pos, S.ids.length - 1));
  const id = S.ids[pos];
  const card = $("#card");
  card.dataset.state = "loading";
  let c;
  try {
    c = await cardJson(id);
  } catch (err) {
    return say(`card ${id}: ${err.message}`, true);
  }
  S.pos = pos;
  S.card = c;
  S.selected = new Set(c.given);
  S.dirty = false;
  S.shownAt = performance.now();
  render(c);
  card.dataset.clipId = String(c.clip_id);
  card.dataset.state = "ready";
  say(allDone ? "every card of this queue is decided" : "");
  S.ids.slice(pos + 1, pos + 3).forEach((next, i) => { // the next cards' JSON and pictures ahead of time
    cardJson(next).then((n) => {
      new Image().src = n.picture;
      if (i === 0) new Image().src = n.timeline;
    }).catch(() => {});
  });
  refreshProgress();
}

// ---- drawing a card -------------------------------------------------------------------------------

function pct(p) {
  return p === undefined ? "" : `${Math.round(p * 100)}%`;
}

function chip(label, prob, cls, mark) {
  const li = el("li", { class: cls || "", "data-label": label });
  li.append(el("span", {}, label), el("span", { class: "prob" }, pct(prob)));
  if (mark) li.append(el("span", { class: "mark" }, mark));
  const play = el("button", { class: "remove", type: "button", title: `play a curated example of ${label}` }, "▶");
  play.addEventListener("click", () => playExample(label));
  li.append(play);
  return li;
}

function render(c) {
  $("#fname").textContent = c.fname;
  $("#position").textContent = `card ${S.pos + 1} of ${S.ids.length} in this queue`;
  $("#suspicion").textContent = `suspicion ${c.suspicion.toFixed(2)} · fold ${c.fold}`;
  $("#reasons").replaceChildren(...c.reasons.map((r) => el("li", {}, r)));
  const d = $("#decision");
  d.hidden = !c.decision;
  if (c.decision) {
    const after = c.decision.after ? c.decision.after.join(", ") : "—";
    d.textContent = `decided: ${c.decision.action.replace("_", " ")} → ${after} (by ${c.decision.reviewer})`;
  }
  const player = $("#player");
  player.src = c.audio;
  $("#picture").src = c.picture;
  const tl = $("#timeline");
  const note = $("#timeline-note");
  tl.hidden = true;
  note.hidden = false;
  note.textContent = "the models' timeline is being drawn…";
  tl.onload = () => { if (tl.src.endsWith(c.timeline)) { tl.hidden = false; note.hidden = true; } };
  tl.onerror = () => { if (tl.src.endsWith(c.timeline)) note.textContent = "no timeline for this clip"; };
  tl.src = c.timeline;
  const wrong = new Set(c.likely_wrong);
  $("#given").replaceChildren(
    ...c.given.map((l) => chip(l, c.probs[l], wrong.has(l) ? "wrong" : "", wrong.has(l) ? "likely wrong" : "")),
  );
  $("#missing").replaceChildren(...c.likely_missing.map((l) => chip(l, c.probs[l], "missing", "likely missing")));
  $("#suggested").replaceChildren(...c.suggested.map((l) => chip(l, c.probs[l])));
  const ex = $("#example-label");
  const first = [...c.likely_missing, ...c.suggested, ...c.given, ...c.candidates];
  ex.replaceChildren(...[...new Set([...first, ...S.classes])].map((l) => el("option", { value: l }, l)));
  $("#example-status").textContent = "";
  drawSelection();
}

function drawSelection() {
  const c = S.card;
  const cands = c.candidates.slice(0, 9);
  $("#candidates").replaceChildren(
    ...cands.map((l, i) => {
      const li = el("li", { class: S.selected.has(l) ? "on" : "", "data-label": l });
      li.append(el("kbd", {}, String(i + 1)), ` ${l} `, el("span", { class: "prob" }, pct(c.probs[l])));
      li.addEventListener("click", () => toggle(l));
      return li;
    }),
  );
  const sel = S.classes.filter((l) => S.selected.has(l));
  $("#selected").replaceChildren(
    ...sel.map((l) => {
      const li = el("li", { "data-label": l }, l);
      const x = el("button", { class: "remove", type: "button", title: `remove ${l}` }, "×");
      x.addEventListener("click", () => toggle(l));
      li.append(x);
      return li;
    }),
  );
}

function toggle(label) {
  if (!S.card) return;
  if (S.selected.has(label)) S.selected.delete(label);
  else S.selected.add(label);
  S.dirty = true;
  drawSelection();
}

// ---- decisions ------------------------------------------------------------------------------------

function sameSet(a, b) {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

async function decide(action, labels) {
  if (!S.card || S.busy) return;
  S.busy = true;
  const c = S.card;
  const body = {
    clip_id: c.clip_id, action, seconds: (performance.now() - S.shownAt) / 1000,
    mode: S.query.mode, rank: S.pos,
  };
  if (labels) body.labels = labels;
  try {
    await post("api/decision", body);
    S.cache.delete(c.clip_id);
    say(`saved: ${action.replace("_", " ")}${labels ? ` → ${labels.join(", ")}` : ""}`);
    if (S.pos < S.ids.length - 1) await show(S.pos + 1);
    else {
      S.cache.delete(c.clip_id);
      await show(S.pos, true);
    }
  } catch (err) {
    say(`not saved: ${err.message}`, true);
  } finally {
    S.busy = false;
  }
}

function saveSelection() {
  if (!S.card) return;
  if (sameSet(S.selected, new Set(S.card.given))) return decide("accept_given");
  if (!S.selected.size) return say("no label chosen: toggle one (1–9), or drop the clip (d)", true);
  return decide("set", S.classes.filter((l) => S.selected.has(l)));
}

async function undo() {
  if (S.busy) return;
  S.busy = true;
  try {
    const body = await post("api/undo");
    const id = body.event.clip_id;
    S.cache.delete(id);
    const pos = S.ids.indexOf(id);
    say(`undone: ${body.event.clip || id}`);
    if (pos >= 0) await show(pos);
  } catch (err) {
    say(`nothing undone: ${err.message}`, true);
  } finally {
    S.busy = false;
  }
}

async function refreshProgress() {
  try {
    const p = await api("api/progress");
    const pairs = Object.values(p.agreement || {}); // one entry per reviewer pair
    const shared = pairs.reduce((n, a) => n + a.n, 0);
    const agreed = pairs.reduce((n, a) => n + a.agree, 0);
    const agree = shared ? ` · reviewers agree on ${agreed} of ${shared}` : "";
    $("#progress").textContent = `${p.decided} of ${p.total} clips decided (${p.mine} by you)${agree}`;
  } catch (err) {
    $("#progress").textContent = "";
  }
}

function playExample(label) {
  const audio = $("#example");
  if (label) $("#example-label").value = label;
  const chosen = $("#example-label").value;
  if (!chosen) return;
  audio.src = `api/example/${encodeURIComponent(chosen)}`;
  $("#player").pause();
  $("#example-status").textContent = `playing a curated ${chosen}…`;
  audio.play().catch(() => { $("#example-status").textContent = `no curated example of ${chosen}`; });
}

// ---- keys -----------------------------------------------------------------------------------------

function typing(target) {
  return target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function onKey(e) {
  const help = $("#help");
  if (e.key === "Escape") {
    help.hidden = true;
    if (typing(e.target)) e.target.blur();
    return;
  }
  if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
  const player = $("#player");
  const step = e.shiftKey ? 5 : 2;
  const actions = {
    " ": () => (player.paused ? player.play().catch(() => {}) : player.pause()),
    ArrowLeft: () => { player.currentTime = Math.max(0, player.currentTime - step); },
    ArrowRight: () => { player.currentTime = Math.min(player.duration || 0, player.currentTime + step); },
    Enter: () => saveSelection(),
    s: () => saveSelection(),
    a: () => decide("accept_models"),
    d: () => decide("drop"),
    u: () => decide("unsure"),
    z: () => undo(),
    j: () => show(S.pos + 1),
    n: () => show(S.pos + 1),
    k: () => show(S.pos - 1),
    p: () => show(S.pos - 1),
    e: () => playExample(),
    "/": () => $("#search").focus(),
    "?": () => { help.hidden = !help.hidden; },
  };
  let act = actions[e.key];
  if (!act && /^[1-9]$/.test(e.key) && S.card) {
    const label = S.card.candidates[Number(e.key) - 1];
    if (label) act = () => toggle(label);
  }
  if (!act) return;
  // The player's own controls already answer space and the arrows when they have the focus.
  if (e.target && e.target.tagName === "AUDIO" && [" ", "ArrowLeft", "ArrowRight"].includes(e.key)) return;
  e.preventDefault();
  if (e.target && e.target.tagName === "BUTTON") e.target.blur(); // or space/Enter would also click it
  act();
}

// ---- start ----------------------------------------------------------------------------------------

function syncControls() {
  $("#mode").value = S.query.mode;
  $("#mode-label").hidden = S.query.mode !== "class";
  $("#mode-pair").hidden = S.query.mode !== "pair";
  $("#bulk").hidden = S.query.mode !== "pair" || !S.query.pair;
  if (S.query.label) $("#mode-label").value = S.query.label;
  if (S.query.pair) $("#mode-pair").value = S.query.pair;
}

async function loadPairs() {
  try {
    const pairs = await api("api/pairs");
    $("#mode-pair").replaceChildren(
      ...pairs.map((p) => el("option", { value: `${p.given}|${p.heard}` }, `given ${p.given}, heard ${p.heard} (${p.count})`)),
    );
  } catch (err) {
    say(`no label pairs: ${err.message}`, true);
  }
}

async function bulk() {
  const button = $("#bulk");
  if (!button.classList.contains("confirm")) {
    button.classList.add("confirm");
    button.textContent = "click again: the models' labels for every undecided clip of this pair";
    return;
  }
  button.classList.remove("confirm");
  button.textContent = "models' labels for the whole pair";
  const [given, heard] = S.query.pair.split("|");
  try {
    const body = await post("api/bulk", { given, heard, action: "accept_models" });
    say(`the models' labels set on ${body.count} clips of the pair`);
    await loadQueue();
  } catch (err) {
    say(`bulk action refused: ${err.message}`, true);
  }
}

// ---- closing the loop: retrain on the corrected labels ------------------------------------------

function showRetrain(info) {
  const line = $("#retrain-status");
  if (!info || info.state === "none") {
    line.textContent = "";
    return;
  }
  let text = `retrain ${info.state}`;
  if (info.state === "running") text += ` (${(info.stages_done || []).length} stage(s) done)`;
  if (info.state === "failed" && info.error) text += `: ${info.error}`;
  const c = info.comparison;
  if (c && c.before != null) {
    const sign = (x) => (x >= 0 ? "+" : "") + x.toFixed(4);
    text += ` · test lwlrap ${c.before.toFixed(4)} → ${c.after.toFixed(4)} (${sign(c.delta)}, 95 % [${sign(c.lo)}, ${sign(c.hi)}])`;
  }
  if (info.state === "done") text += ` · re-rank: ${info.review_next}`;
  line.textContent = text;
  clearTimeout(S.retrainTimer);
  if (info.state === "running") S.retrainTimer = setTimeout(pollRetrain, 5000);
}

async function pollRetrain() {
  try {
    showRetrain(await api("api/retrain"));
  } catch (err) {
    $("#retrain-status").textContent = `retrain: ${err.message}`;
  }
}

async function startRetrain() {
  const button = $("#retrain");
  button.blur();
  try {
    showRetrain(await post("api/retrain"));
  } catch (err) {
    say(`retrain refused: ${err.message}`, true);
  }
}

async function init() {
  let session;
  try {
    session = await api("api/session");
  } catch (err) {
    return say(`cannot reach the review server (${err.message})`, true);
  }
  S.token = session.token;
  readHash(session.mode);
  S.classes = session.classes;
  $("#session").textContent = `run ${session.run} · reviewer ${session.reviewer} · ${session.classes.length} classes`;
  $("#class-list").replaceChildren(...S.classes.map((c) => el("option", { value: c })));
  $("#mode-label").replaceChildren(...S.classes.map((c) => el("option", { value: c }, c)));
  await loadPairs();
  document.addEventListener("keydown", onKey);
  $("#mode").addEventListener("change", (e) => {
    S.query.mode = e.target.value;
    e.target.blur();
    loadQueue().catch((err) => say(err.message, true));
  });
  $("#mode-label").addEventListener("change", (e) => {
    S.query.label = e.target.value;
    e.target.blur();
    loadQueue().catch((err) => say(err.message, true));
  });
  $("#mode-pair").addEventListener("change", (e) => {
    S.query.pair = e.target.value;
    e.target.blur();
    loadQueue().catch((err) => say(err.message, true));
  });
  $("#bulk").addEventListener("click", bulk);
  $("#retrain").addEventListener("click", startRetrain);
  pollRetrain();
  $("#help-button").addEventListener("click", () => { $("#help").hidden = !$("#help").hidden; });
  $("#help").addEventListener("click", () => { $("#help").hidden = true; });
  $("#example-button").addEventListener("click", () => playExample());
  $("#example").addEventListener("error", () => {
    $("#example-status").textContent = `no curated example of ${$("#example-label").value}`;
  });
  $("#search").addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    const v = e.target.value.trim();
    const label = S.classes.find((c) => c.toLowerCase() === v.toLowerCase());
    if (!label) return say(`no class '${v}'`, true);
    if (!S.selected.has(label)) toggle(label);
    e.target.value = "";
    e.target.blur();
  });
  try {
    await loadQueue();
  } catch (err) {
    say(`cannot load the queue: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", init);
