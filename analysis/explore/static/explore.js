// fastconv explore: the page. Plain JavaScript, no build step; every number it
// shows comes from the server's JSON API (/openapi.json describes it).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, input: null, acts: null, selected: null, live: false, stream: null,
  browse: { split: "test", label: "", order: "first", offset: 0, seed: 0, count: 30, total: 0 },
  grids: {},  // layer name -> {canvas, marker, cols, tileW, tileH, gap, units}
  unitToken: 0,  // bumped at each selection, so that stale polls stop
};

// ---------------------------------------------------------------- errors and requests

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function query(params) {
  return new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""))
    .toString();
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

function fillTop5(list, top5) {
  list.textContent = "";
  for (const item of top5) {
    const li = document.createElement("li");
    li.textContent = `${item.name} ${pct(item.probability)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round(80 * item.probability))}px`;
    li.appendChild(bar);
    list.appendChild(li);
  }
}

// ---------------------------------------------------------------- start

async function start() {
  $("error-close").addEventListener("click", clearError);
  try {
    state.info = await api("/api/info");
  } catch (error) {
    showError(`cannot reach the explorer's server: ${error.message}`);
    return;
  }
  const info = state.info;
  document.title = `fastconv explore: ${info.title}`;
  $("title").textContent = info.title;
  const [c, h, w] = info.input_shape;
  $("subtitle").textContent = `input ${h}x${w}, ${c === 1 ? "grey" : c + " channels"}; ${info.classes.length} classes; ` +
    (info.dataset ? `data set ${info.dataset} (${info.splits.test} test, ${info.splits.train} training images)` :
      "no data set");
  $("upload-note").textContent = `PNG, JPEG, GIF, BMP or WebP, up to ${(info.max_upload_bytes / 1048576).toFixed(0)} MB ` +
    `and ${info.max_side} pixels a side; it is scaled and cropped to ${h}x${w}.`;
  for (const select of [$("label"), $("explain-target"), $("adv-target")]) {
    info.classes.forEach((name, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = `${k}: ${name}`;
      select.appendChild(option);
    });
  }
  $("adv-eps").value = info.eps.toFixed(3);
  buildLayers();
  buildAttributions();
  bindControls();
  if (info.dataset) {
    pollIndex();
    await browse();
    const first = document.querySelector("#thumbs img");
    if (first) await setInput(first.dataset.input);
  } else {
    $("dataset-missing").hidden = false;
    $("dataset-missing").textContent = `The run's data set is not available (${info.dataset_error}): upload an image or use the webcam.`;
    selectTab("upload");
  }
}

function bindControls() {
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("split").addEventListener("change", () => { state.browse.split = $("split").value; state.browse.offset = 0; browse(); });
  $("label").addEventListener("change", () => { state.browse.label = $("label").value; state.browse.offset = 0; browse(); });
  for (const id of ["order-first", "order-random", "order-misclassified"]) {
    $(id).addEventListener("click", () => {
      state.browse.order = $(id).dataset.order;
      state.browse.offset = 0;
      if (state.browse.order === "random") state.browse.seed = Math.floor(Math.random() * 1e9);
      browse();
    });
  }
  $("prev").addEventListener("click", () => { state.browse.offset = Math.max(0, state.browse.offset - state.browse.count); browse(); });
  $("next").addEventListener("click", () => {
    if (state.browse.offset + state.browse.count < state.browse.total) { state.browse.offset += state.browse.count; browse(); }
  });
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
  const drop = $("drop");
  for (const target of [drop, document.body]) {
    target.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
    });
  }
  $("webcam-toggle").addEventListener("click", () => (state.live ? stopLive() : startLive()));
  $("explain-target").addEventListener("change", refreshAttributions);
  $("adv-run").addEventListener("click", attack);
  $("adv-explore").addEventListener("click", () => { if (state.advInput) setInput(state.advInput); });
}

function selectTab(name) {
  document.querySelectorAll(".tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.tab === name)));
  for (const tab of ["dataset", "upload", "webcam"]) $(`tab-${tab}`).hidden = tab !== name;
  if (name !== "webcam" && state.live) stopLive();
}

// ---------------------------------------------------------------- the data set

async function browse() {
  const b = state.browse;
  let page;
  try {
    page = await api(`/api/images?${query({ split: b.split, label: b.label, order: b.order, offset: b.offset,
      count: b.count, seed: b.seed })}`);
  } catch (error) { showError(error.message); return; }
  b.total = page.total;
  const thumbs = $("thumbs");
  thumbs.textContent = "";
  for (const item of page.images) {
    const img = document.createElement("img");
    img.src = `/api/image?${query({ input: item.input })}`;
    img.dataset.input = item.input;
    const wrong = item.predicted !== undefined && item.predicted !== item.label;
    img.alt = `${item.input}: ${item.name}`;
    img.title = `${item.input}: ${item.name}` + (wrong ? `, predicted ${state.info.classes[item.predicted]}` : "");
    if (wrong) img.classList.add("wrong");
    if (item.input === state.input) img.classList.add("chosen");
    img.addEventListener("click", () => setInput(item.input));
    thumbs.appendChild(img);
  }
  const last = Math.min(b.offset + b.count, b.total);
  $("page-text").textContent = b.total ? `${b.offset + 1}-${last} of ${b.total}` : "no image";
}

async function pollIndex() {
  $("index-status").hidden = false;
  for (;;) {
    let status;
    try { status = await api("/api/status"); } catch (error) { $("index-text").textContent = error.message; return; }
    $("index-progress").value = status.fraction;
    if (status.state === "done") {
      $("index-text").textContent = `top images: ${status.total} images searched`;
      $("index-progress").hidden = true;
      if (state.selected) refreshTopImages(state.unitToken);
      return;
    }
    if (status.state === "failed") { $("index-text").textContent = `top images failed: ${status.error}`; return; }
    $("index-text").textContent = `top images: searching ${status.done} of ${status.total || "?"} images`;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---------------------------------------------------------------- inputs

async function upload(file) {
  clearError();
  try {
    const acts = await api("/api/inputs", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    showActivations(acts);
  } catch (error) { showError(`${file.name || "upload"}: ${error.message}`); }
}

async function setInput(name) {
  clearError();
  try {
    showActivations(await api(`/api/activations?${query({ input: name })}`));
  } catch (error) { showError(error.message); }
}

function showActivations(acts) {
  state.acts = acts;
  state.input = acts.input;
  $("current-image").src = `/api/image?${query({ input: acts.input })}`;
  const label = acts.label === null || acts.label === undefined ? "" : `, label ${state.info.classes[acts.label]}`;
  $("current-name").textContent = acts.input.startsWith("upload/") ? `uploaded image${label}` : `${acts.input}${label}`;
  fillTop5($("top5"), acts.top5);
  document.querySelectorAll("#thumbs img").forEach((img) => img.classList.toggle("chosen", img.dataset.input === acts.input));
  for (const layer of acts.layers) drawLayer(layer);
  if (state.selected) refreshProjections();
  if (!state.live) refreshAttributions();
}

// ---------------------------------------------------------------- activations

function buildLayers() {
  const holder = $("layers");
  for (const layer of state.info.layers) {
    const box = document.createElement("div");
    box.className = "layer";
    const title = document.createElement("h3");
    title.textContent = layer.name + " ";
    const kind = document.createElement("span");
    kind.textContent = `${layer.type}, ${layer.shape.join("x")}`;
    title.appendChild(kind);
    const wrap = document.createElement("div");
    wrap.className = "grid-wrap";
    const canvas = document.createElement("canvas");
    canvas.dataset.layer = layer.name;
    const marker = document.createElement("div");
    marker.className = "marker";
    marker.hidden = true;
    wrap.append(canvas, marker);
    box.append(title, wrap);
    holder.appendChild(box);
    const units = layer.units;
    const [tileH, tileW] = layer.kind === "maps" ? layer.shape.slice(1) : [1, 1];
    const gap = layer.kind === "maps" ? 1 : 0;
    const cols = Math.ceil(Math.sqrt(units * (tileH + gap) / (tileW + gap)));
    const rows = Math.ceil(units / cols);
    canvas.width = cols * (tileW + gap) - gap;
    canvas.height = rows * (tileH + gap) - gap;
    // Whole pixels per value, so that the maps stay sharp.
    const scale = Math.max(1, Math.floor(360 / canvas.width));
    canvas.style.width = `${Math.min(canvas.width * scale, 480)}px`;
    const grid = { canvas, marker, cols, tileW, tileH, gap, units, layer };
    state.grids[layer.name] = grid;
    canvas.addEventListener("mousemove", (e) => hover(grid, e));
    canvas.addEventListener("mouseleave", () => { $("tip").hidden = true; });
    canvas.addEventListener("click", (e) => { const u = unitAt(grid, e); if (u !== null) selectUnit(layer.name, u); });
  }
}

function drawLayer(layer) {
  const grid = state.grids[layer.name];
  if (!grid) return;
  grid.data = layer;
  const ctx = grid.canvas.getContext("2d");
  const image = ctx.createImageData(grid.canvas.width, grid.canvas.height);
  const px = image.data;
  for (let i = 0; i < px.length; i += 4) { px[i] = 43; px[i + 1] = 52; px[i + 2] = 64; px[i + 3] = 255; }
  const { cols, tileW, tileH, gap } = grid;
  if (layer.kind === "maps") {
    const bytes = Uint8Array.from(atob(layer.bytes), (ch) => ch.charCodeAt(0));
    const plane = tileW * tileH;
    for (let u = 0; u < grid.units; u++) {
      const x0 = (u % cols) * (tileW + gap), y0 = Math.floor(u / cols) * (tileH + gap);
      for (let y = 0; y < tileH; y++) {
        for (let x = 0; x < tileW; x++) {
          const v = bytes[u * plane + y * tileW + x];
          const o = ((y0 + y) * image.width + x0 + x) * 4;
          px[o] = v; px[o + 1] = v; px[o + 2] = v;
        }
      }
    }
  } else {
    const values = layer.values;
    const peak = Math.max(1e-12, ...values.map(Math.abs));
    values.forEach((v, u) => {
      const o = (Math.floor(u / cols) * image.width + (u % cols)) * 4;
      const s = Math.round(255 * Math.abs(v) / peak);
      if (v >= 0) { px[o] = s; px[o + 1] = s; px[o + 2] = s; } else { px[o] = 0; px[o + 1] = Math.round(s / 3); px[o + 2] = s; }
    });
  }
  ctx.putImageData(image, 0, 0);
}

function unitAt(grid, event) {
  const rect = grid.canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * grid.canvas.width / rect.width;
  const y = (event.clientY - rect.top) * grid.canvas.height / rect.height;
  const col = Math.floor(x / (grid.tileW + grid.gap)), row = Math.floor(y / (grid.tileH + grid.gap));
  if (col < 0 || col >= grid.cols || row < 0) return null;
  const unit = row * grid.cols + col;
  return unit < grid.units ? unit : null;
}

function unitValue(grid, unit) {
  const d = grid.data;
  if (!d) return "";
  if (d.kind === "maps") return `max ${d.max[unit].toFixed(3)}, mean ${d.mean[unit].toFixed(3)}`;
  return `value ${d.values[unit].toFixed(3)}` +
    (grid.layer.name === state.info.layers[state.info.layers.length - 1].name ? ` (${state.info.classes[unit]})` : "");
}

function hover(grid, event) {
  const unit = unitAt(grid, event);
  const tip = $("tip");
  if (unit === null) { tip.hidden = true; return; }
  tip.textContent = `${grid.layer.name} unit ${unit}: ${unitValue(grid, unit)}`;
  tip.style.left = `${event.clientX + 12}px`;
  tip.style.top = `${event.clientY + 12}px`;
  tip.hidden = false;
}

function placeMarker() {
  for (const grid of Object.values(state.grids)) grid.marker.hidden = true;
  if (!state.selected) return;
  const grid = state.grids[state.selected.layer];
  const scale = grid.canvas.getBoundingClientRect().width / grid.canvas.width;
  const u = state.selected.unit;
  const m = grid.marker;
  m.style.left = `${(u % grid.cols) * (grid.tileW + grid.gap) * scale - 2}px`;
  m.style.top = `${Math.floor(u / grid.cols) * (grid.tileH + grid.gap) * scale - 2}px`;
  m.style.width = `${grid.tileW * scale + 4}px`;
  m.style.height = `${grid.tileH * scale + 4}px`;
  m.hidden = false;
}

// ---------------------------------------------------------------- the selected unit

function selectUnit(layer, unit) {
  state.selected = { layer, unit };
  state.unitToken += 1;
  placeMarker();
  $("unit-title").textContent = `${layer} unit ${unit}`;
  $("unit-body").hidden = false;
  refreshProjections();
  refreshTopImages(state.unitToken);
  refreshFeature(state.unitToken);
}

function unitQuery(extra) {
  return query({ layer: state.selected.layer, unit: state.selected.unit, ...extra });
}

function refreshProjections() {
  if (!state.input || !state.selected) return;
  $("proj-deconvnet").src = `/api/projection?${unitQuery({ input: state.input, method: "deconvnet" })}`;
  $("proj-guided").src = `/api/projection?${unitQuery({ input: state.input, method: "guided-backprop" })}`;
}

async function refreshTopImages(token) {
  const holder = $("top-images");
  let answer;
  try { answer = await api(`/api/top-images?${unitQuery({})}`); } catch (error) {
    holder.textContent = "";
    $("top-note").textContent = error.message;
    return;
  }
  if (token !== state.unitToken) return;
  if (answer.status.state !== "done") {
    $("top-note").textContent = answer.status.state === "failed" ? `the index failed: ${answer.status.error}` :
      `waiting for the index: ${pct(answer.status.fraction)} searched`;
    holder.textContent = "";
    return;  // pollIndex refreshes this panel once the index is built
  }
  $("top-note").textContent = `out of ${answer.searched} ${state.info.top_split === "train" ? "training" : "test"} images: ` +
    "receptive field, and its deconvnet projection";
  holder.textContent = "";
  for (const item of answer.images) {
    const figure = document.createElement("figure");
    const pair = document.createElement("div");
    pair.className = "pair";
    const crop = document.createElement("img");
    crop.src = `/api/image?${query({ input: item.input, box: item.box.join(",") })}`;
    crop.alt = `receptive field in ${item.input}`;
    crop.className = "crop";
    crop.title = `open ${item.input}`;
    crop.style.cursor = "pointer";
    crop.addEventListener("click", () => setInput(item.input));
    const projection = document.createElement("img");
    projection.src = `/api/projection?${unitQuery({ input: item.input, method: "deconvnet", crop: "true" })}`;
    projection.alt = `deconvnet projection in ${item.input}`;
    projection.className = "crop-projection";
    pair.append(crop, projection);
    const caption = document.createElement("figcaption");
    caption.textContent = `${item.value.toFixed(2)} · ${item.name}`;
    figure.append(pair, caption);
    holder.appendChild(figure);
  }
}

async function refreshFeature(token) {
  const img = $("feature"), bar = $("feature-progress");
  img.removeAttribute("src");
  bar.hidden = false;
  bar.value = 0;
  for (;;) {
    let answer;
    try { answer = await api(`/api/feature-vis?${unitQuery({})}`); } catch (error) { showError(error.message); bar.hidden = true; return; }
    if (token !== state.unitToken) return;
    if (answer.url) { img.src = answer.url; bar.hidden = true; return; }
    if (answer.status.state === "failed") { showError(`feature visualization: ${answer.status.error}`); bar.hidden = true; return; }
    bar.value = answer.status.fraction;
    await new Promise((r) => setTimeout(r, 400));
    if (token !== state.unitToken) return;
  }
}

// ---------------------------------------------------------------- why this class

const ATTRIBUTION_NAMES = { occlusion: "occlusion (red: hiding it lowers the class)", saliency: "saliency",
  gradcam: "Grad-CAM", "integrated-gradients": "integrated gradients (red +, blue -)" };

function buildAttributions() {
  const holder = $("attributions");
  for (const method of state.info.attributions) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.id = `attr-${method}`;
    img.alt = `${method} of the current input`;
    const caption = document.createElement("figcaption");
    caption.textContent = ATTRIBUTION_NAMES[method] || method;
    figure.append(img, caption);
    holder.appendChild(figure);
  }
}

function refreshAttributions() {
  if (!state.input) return;
  const target = $("explain-target").value;
  for (const method of state.info.attributions) {
    $(`attr-${method}`).src = `/api/attribution?${query({ input: state.input, method, target })}`;
  }
}

// ---------------------------------------------------------------- adversarial

async function attack() {
  if (!state.input) return;
  clearError();
  const button = $("adv-run");
  button.disabled = true;
  try {
    const result = await api(`/api/adversarial?${query({ input: state.input, eps: $("adv-eps").value,
      target: $("adv-target").value, steps: $("adv-steps").value })}`, { method: "POST" });
    state.advInput = result.input;
    $("adv-image").src = result.image;
    $("adv-delta").src = result.perturbation;
    const goal = result.target === null ? "away from the prediction" : `towards ${state.info.classes[result.target]}`;
    $("adv-text").textContent = `PGD ${goal}, eps ${result.eps}, ${result.steps} steps: ` +
      (result.succeeded ? "succeeded" : "did not succeed") + ". New prediction:";
    fillTop5($("adv-top5"), result.top5);
    $("adv-result").hidden = false;
  } catch (error) { showError(error.message); } finally { button.disabled = false; }
}

// ---------------------------------------------------------------- live webcam

async function startLive() {
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("this browser gives the page no camera (it needs https or localhost)");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) { showError(`no camera: ${error.message}`); return; }
  const video = $("video");
  video.srcObject = state.stream;
  await video.play();
  state.live = true;
  $("webcam-toggle").textContent = "Stop live mode";
  liveLoop();
}

function stopLive() {
  state.live = false;
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("webcam-toggle").textContent = "Start live mode";
  $("webcam-rate").textContent = "";
  refreshAttributions();
}

async function liveLoop() {
  const video = $("video"), canvas = $("frame");
  const [, h, w] = state.info.input_shape;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  let frames = 0, since = performance.now();
  while (state.live) {
    if (video.videoWidth === 0) { await new Promise((r) => setTimeout(r, 50)); continue; }
    const side = Math.min(video.videoWidth, video.videoHeight * w / h);
    const sx = (video.videoWidth - side) / 2, sy = (video.videoHeight - side * h / w) / 2;
    ctx.drawImage(video, sx, sy, side, side * h / w, 0, 0, w, h);
    const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
    try {
      showActivations(await api("/api/inputs", { method: "POST", body: blob, headers: { "Content-Type": "image/png" } }));
    } catch (error) { showError(error.message); stopLive(); return; }
    frames += 1;
    const now = performance.now();
    if (now - since > 1000) {
      $("webcam-rate").textContent = `${(1000 * frames / (now - since)).toFixed(1)} frames/s`;
      frames = 0; since = now;
    }
  }
}

window.addEventListener("resize", placeMarker);
start();
