// noisytag page: uploads files (or a microphone recording) to POST api/tag and draws the answer.
// Drawn here from the API's JSON: an SVG bar chart of the top tags, a canvas heat map of each top tag's
// probability per window, and the log-mel image (a grayscale PNG in the JSON, coloured here).
"use strict";

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const LUT = Array.from({ length: 256 }, (_, i) => {
  const v = (i / 255) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(v), VIRIDIS.length - 2);
  const f = v - k;
  return VIRIDIS[k].map((c, j) => Math.round(c + (VIRIDIS[k + 1][j] - c) * f));
});
const PLOT = { left: 118, right: 10, top: 4, axis: 20 }; // shared by both canvases so their times line up
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (sel, root = document) => root.querySelector(sel);
let queue = Promise.resolve(); // one upload at a time, in the order given

function rgb(p) {
  const c = LUT[Math.max(0, Math.min(255, Math.round(p * 255)))];
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

async function init() {
  const info = $("#model-info");
  try {
    info.textContent = describeModel((await (await fetch("api/health")).json()).model);
  } catch (err) {
    info.textContent = "the model's description is unavailable";
  }
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  const drop = $("#drop");
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  setupRecorder();
}

// The header line: the run directory's name as a label ("run: demo"), so a run named "run" reads "run: run".
function describeModel(m) {
  return `run: ${m.run} · ${m.architectures.join(", ")} · stages ${m.stages.join(", ")} · ` +
    `${m.members} models · ${m.n_classes} classes · ${m.backend}, ${m.mode} mode`;
}

function addFiles(files) {
  for (const file of files) enqueue(file, file.name);
}

function enqueue(blob, name) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = name;
  $("#results").prepend(card);
  queue = queue.then(() => tag(card, blob, name));
}

async function tag(card, blob, name) {
  card.dataset.state = "running";
  $(".status", card).textContent = "tagging…";
  const form = new FormData();
  form.append("file", blob, name);
  let res, body;
  try {
    res = await fetch("api/tag", { method: "POST", body: form });
    body = await res.json();
  } catch (err) {
    return fail(card, res ? `the server answered HTTP ${res.status}` : `the request failed (${err.message})`);
  }
  if (!res.ok) return fail(card, body && typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
  try {
    await render(card, body);
  } catch (err) {
    fail(card, `cannot draw the answer (${err.message})`);
  }
}

function fail(card, message) {
  card.dataset.state = "error";
  $(".status", card).textContent = message;
}

async function render(card, r) {
  card.dataset.state = "drawing"; // shows the body, so the canvases have a width
  $(".meta", card).textContent = `${r.duration.toFixed(1)} s · tagged in ${r.elapsed_s.toFixed(2)} s`;
  $(".top-label", card).textContent = r.labels[0].label;
  $(".top-prob", card).textContent = r.labels[0].prob.toFixed(3);
  drawBars($(".bars", card), r.labels);
  const lm = r.logmel;
  const wins = r.timeline.windows;
  const span = [
    Math.min(0, lm.start_s, wins.length ? wins[0].start_s : 0),
    Math.max(r.duration, lm.start_s + lm.width * lm.seconds_per_column, wins.length ? wins[wins.length - 1].end_s : 0),
  ];
  drawTimeline($(".timeline", card), r.timeline, span, $(".readout", card));
  await drawLogmel($(".logmel", card), lm, span);
  card.dataset.state = "done";
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawBars(el, labels) {
  const W = 330, row = 24, labelW = 120, numW = 46, barW = W - labelW - numW;
  el.replaceChildren();
  el.setAttribute("viewBox", `0 0 ${W} ${row * labels.length}`);
  labels.forEach((l, i) => {
    const y = i * row;
    el.append(svg("text", { x: labelW - 6, y: y + row / 2, "text-anchor": "end" }, l.label));
    el.append(svg("rect", { class: "track", x: labelW, y: y + 4, width: barW, height: row - 8, rx: 3 }));
    el.append(svg("rect", { x: labelW, y: y + 4, width: Math.max(barW * l.prob, 1), height: row - 8, rx: 3, fill: rgb(l.prob) }));
    el.append(svg("text", { x: W - 2, y: y + row / 2, "text-anchor": "end" }, l.prob.toFixed(3)));
  });
}

function setup(canvas, cssH) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 640;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.height = `${cssH}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, cssW, cssH);
  return { ctx, cssW };
}

function timeScale(span, cssW) {
  const w = cssW - PLOT.left - PLOT.right;
  return (t) => PLOT.left + ((t - span[0]) / (span[1] - span[0] || 1)) * w;
}

function drawAxis(ctx, span, x, y) {
  const length = span[1] - span[0];
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200];
  const step = steps.find((s) => length / s <= 8) || 3600;
  const fmt = (t) => (step >= 60 ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}` : `${+t.toFixed(1)} s`);
  ctx.fillStyle = "#667085";
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let t = Math.ceil(span[0] / step) * step; t <= span[1] + 1e-9; t += step) {
    ctx.fillRect(x(t), y, 1, 4);
    ctx.fillText(fmt(t), Math.min(Math.max(x(t), PLOT.left + 12), x(span[1]) - 12), y + 5);
  }
}

function drawTimeline(canvas, tl, span, readout) {
  const rowH = 22, rows = tl.classes.length;
  const cssH = PLOT.top + rows * rowH + PLOT.axis;
  const { ctx, cssW } = setup(canvas, cssH);
  const x = timeScale(span, cssW);
  const wins = tl.windows;
  const mid = wins.map((w) => (w.start_s + w.end_s) / 2);
  // Each window owns the span between the midpoints of its neighbours' centres (windows overlap).
  const edges = wins.map((w, i) => [
    i === 0 ? w.start_s : (mid[i - 1] + mid[i]) / 2,
    i === wins.length - 1 ? w.end_s : (mid[i] + mid[i + 1]) / 2,
  ]);
  tl.classes.forEach((label, c) => {
    const y = PLOT.top + c * rowH;
    edges.forEach(([a, b], w) => { // whole pixels: no anti-aliased seams between neighbours
      const x0 = Math.round(x(a));
      ctx.fillStyle = rgb(tl.probs[w][c]);
      ctx.fillRect(x0, y, Math.max(Math.round(x(b)) - x0, 1), rowH - 2);
    });
    ctx.fillStyle = "#1d2430";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(label, PLOT.left - 6, y + rowH / 2);
  });
  drawAxis(ctx, span, x, PLOT.top + rows * rowH);
  canvas.onmousemove = (e) => {
    const t = span[0] + ((e.offsetX - PLOT.left) / (cssW - PLOT.left - PLOT.right)) * (span[1] - span[0]);
    let w = 0;
    mid.forEach((m, i) => { if (Math.abs(m - t) < Math.abs(mid[w] - t)) w = i; });
    if (!wins.length) return;
    readout.textContent = `${wins[w].start_s.toFixed(1)}–${wins[w].end_s.toFixed(1)} s: ` +
      tl.classes.map((c, i) => `${c} ${tl.probs[w][i].toFixed(2)}`).join(" · ");
  };
}

async function drawLogmel(canvas, lm, span) {
  const plotH = 128;
  const { ctx, cssW } = setup(canvas, PLOT.top + plotH + PLOT.axis);
  const x = timeScale(span, cssW);
  const bytes = Uint8Array.from(atob(lm.png), (ch) => ch.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const off = document.createElement("canvas");
  off.width = bitmap.width;
  off.height = bitmap.height;
  const octx = off.getContext("2d");
  octx.drawImage(bitmap, 0, 0);
  const img = octx.getImageData(0, 0, off.width, off.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const c = LUT[img.data[i]];
    img.data[i] = c[0];
    img.data[i + 1] = c[1];
    img.data[i + 2] = c[2];
  }
  octx.putImageData(img, 0, 0);
  const x0 = x(lm.start_s), x1 = x(lm.start_s + lm.width * lm.seconds_per_column);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, x0, PLOT.top, Math.max(x1 - x0, 1), plotH);
  ctx.fillStyle = "#667085";
  ctx.textAlign = "right";
  const hz = (f) => (f >= 1000 ? `${+(f / 1000).toFixed(1)} kHz` : `${Math.round(f)} Hz`);
  ctx.textBaseline = "top";
  ctx.fillText(hz(lm.fmax), PLOT.left - 6, PLOT.top);
  ctx.textBaseline = "middle";
  ctx.fillText("mel bands", PLOT.left - 6, PLOT.top + plotH / 2);
  ctx.textBaseline = "bottom";
  ctx.fillText(hz(lm.fmin), PLOT.left - 6, PLOT.top + plotH);
  drawAxis(ctx, span, x, PLOT.top + plotH);
}

// ---- microphone: MediaRecorder → (decoded in the browser to WAV, which every server build reads) → upload

function setupRecorder() {
  const button = $("#record");
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder)) {
    $("#hint").append(" Recording needs a browser with MediaRecorder on https or localhost.");
    return;
  }
  button.hidden = false;
  let recorder = null;
  button.addEventListener("click", async () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      $("#hint").textContent = `The microphone is unavailable (${err.message}).`;
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      recorder = null;
      button.textContent = "● record";
      button.classList.remove("on");
      const name = `recording-${new Date().toTimeString().slice(0, 8).replaceAll(":", "")}`;
      try {
        enqueue(await toWav(blob), `${name}.wav`);
      } catch (err) { // the browser cannot decode its own recording: let the server try
        enqueue(blob, `${name}.${(blob.type.split("/")[1] || "webm").split(";")[0]}`);
      }
    };
    recorder.start();
    button.textContent = "■ stop";
    button.classList.add("on");
  });
}

async function toWav(blob) {
  const ctx = new AudioContext();
  try {
    const buf = await ctx.decodeAudioData(await blob.arrayBuffer());
    const n = buf.length, sr = buf.sampleRate;
    const mono = new Float32Array(n);
    for (let ch = 0; ch < buf.numberOfChannels; ch++) {
      const data = buf.getChannelData(ch);
      for (let i = 0; i < n; i++) mono[i] += data[i] / buf.numberOfChannels;
    }
    const out = new DataView(new ArrayBuffer(44 + 2 * n));
    const tag = (pos, s) => [...s].forEach((ch, i) => out.setUint8(pos + i, ch.charCodeAt(0)));
    tag(0, "RIFF"); out.setUint32(4, 36 + 2 * n, true); tag(8, "WAVE"); tag(12, "fmt ");
    out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
    out.setUint32(24, sr, true); out.setUint32(28, 2 * sr, true); out.setUint16(32, 2, true);
    out.setUint16(34, 16, true); tag(36, "data"); out.setUint32(40, 2 * n, true);
    for (let i = 0; i < n; i++) out.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, mono[i])) * 32767, true);
    return new Blob([out.buffer], { type: "audio/wav" });
  } finally {
    ctx.close();
  }
}

document.addEventListener("DOMContentLoaded", init);
