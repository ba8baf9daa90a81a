"""The attention viewer's page: markup, styles and script, inline, with no network and no
libraries, modelled on bertviz's head view and model view (Vig 2019).

:mod:`encoderkit.views.viewer` fills in ``__TITLE__`` (escaped text) and ``__DATA__`` (JSON with
``<``, ``>`` and ``&`` escaped): the tokens, the weights as nested lists
[layer][head][query][key], the starting threshold and the most lines drawn at once.

Head view: one line per (head, query, key) whose weight reaches the threshold, from the query on
the left to the key on the right, opacity = weight, one colour per head. Lines are built as one
SVG string (far faster than one DOM call each) and hovering only toggles a class on the lines of
the hovered token, so moving along a long column redraws nothing. Model view: one canvas per
layer and head, one pixel per (query, key), alpha = weight, drawn when first shown.

Test hooks: ``#lines`` carries ``data-layer``, ``data-heads``, ``data-threshold``, ``data-lines``
and ``data-total``; every line ``data-head``, ``data-query``, ``data-key``, ``data-weight``; the
body ``data-view`` and ``data-render-ms`` (the last head-view draw).
"""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0; }
#meta { color: #666; margin: 2px 0 8px; }
#help { max-width: 760px; margin: 0 0 12px; line-height: 1.4; }
nav button { font: inherit; padding: 4px 12px; border: 1px solid #999; background: #fff; }
nav button[aria-pressed="true"] { background: #333; color: #fff; border-color: #333; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 20px; margin: 12px 0; }
.swatch { font: 12px system-ui, sans-serif; min-width: 26px; padding: 2px 4px; margin: 0 1px;
          border: 2px solid var(--c); background: var(--c); color: #fff; cursor: pointer; }
.swatch[aria-pressed="false"] { background: #fff; color: var(--c); }
#threshold { vertical-align: middle; }
#count, #info { color: #555; }
#info { min-height: 18px; }
#view { display: flex; align-items: flex-start; margin-top: 4px; }
.column { display: flex; flex-direction: column; }
.token { display: flex; align-items: center; height: 20px; cursor: default; }
.text { padding: 0 4px; white-space: pre; }
.query { justify-content: flex-end; }
.token.active { background: #eee; }
.cells { display: flex; height: 14px; }
.cells i { width: 5px; height: 14px; background: var(--c); opacity: 0; }
#lines line { stroke-width: 2; }
#lines.focus line { visibility: hidden; }
#lines.focus line.lit { visibility: visible; }
#grid { display: grid; gap: 4px; align-items: center; justify-items: center; }
#grid .label { color: #555; font-size: 12px; }
.thumb { padding: 0; border: 1px solid #ccc; background: #fff; cursor: pointer; line-height: 0; }
.thumb:hover, .thumb:focus { border-color: #333; }
.thumb canvas { width: 64px; height: 64px; image-rendering: pixelated; }
</style>
<style id="hidden-heads"></style>
</head>
<body data-view="head">
<h1>__TITLE__</h1>
<p id="meta"></p>
<p id="help">Each line joins a token on the left to a token on the right that it attends to;
its opacity is the attention weight, and each head has its own colour. Click a head's colour to
show or hide it, double-click to show only that head (double-click it again to show all). Hover
a token to keep only its lines and see its weights per head as coloured cells. Lines below the
threshold are not drawn (at most __MAX__ at once, the strongest). The model view shows every
layer and head at a glance (darker = more weight); click one to open it here.</p>
<nav><button type="button" id="tab-head" aria-pressed="true">Head view</button><button
type="button" id="tab-model" aria-pressed="false">Model view</button></nav>
<section id="head-view">
  <div class="controls">
    <label>Layer <select id="layer"></select></label>
    <span id="heads" role="group" aria-label="Heads">Heads </span>
    <label>Hide weights below <input type="range" id="threshold" min="0" max="1" step="0.01">
      <output id="threshold-value"></output></label>
    <span id="count"></span>
  </div>
  <div id="info"></div>
  <div id="view">
    <div id="queries" class="column"></div>
    <svg id="lines" width="260"></svg>
    <div id="keys" class="column"></div>
  </div>
</section>
<section id="model-view" hidden>
  <div id="grid"></div>
</section>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const W = DATA.weights, T = DATA.tokens.length, L = W.length, H = W[0].length;
const ROW = 20, WIDTH = 260;
const byId = (id) => document.getElementById(id);
const svg = byId("lines"), layerSel = byId("layer"), slider = byId("threshold");
const RGB = Array.from({ length: H }, (_, h) => hslToRgb(360 * h / H, 0.7, 0.45));
const COLOURS = RGB.map(([r, g, b]) => `rgb(${r}, ${g}, ${b})`);
const state = { layer: 0, shown: new Set(RGB.keys()), threshold: DATA.threshold, focus: null };
let drawnQ = [], drawnK = [], lit = [], shaded = [];

function weight(l, h, q, k) { return W[l][h][q][k]; }
function hslToRgb(hue, s, l) {
  const a = s * Math.min(l, 1 - l);
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

byId("meta").textContent = `${T} tokens, ${L} layers \u00d7 ${H} heads`;
svg.setAttribute("height", String(T * ROW));
for (let l = 0; l < L; l++) layerSel.add(new Option(String(l), String(l)));
slider.value = String(state.threshold);

const swatches = COLOURS.map((colour, h) => {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "swatch";
  b.dataset.head = String(h);
  b.textContent = String(h);
  b.style.setProperty("--c", colour);
  b.title = `head ${h}: click to show or hide, double-click to show only this head`;
  // A double-click is two clicks and then the dblclick: the clicks cancel out, so the dblclick
  // acts on the state from before it.
  b.addEventListener("click", () => {
    if (state.shown.has(h)) state.shown.delete(h); else state.shown.add(h);
    draw();
  });
  b.addEventListener("dblclick", () => {
    const only = state.shown.size === 1 && state.shown.has(h);
    state.shown = only ? new Set(RGB.keys()) : new Set([h]);
    draw();
  });
  byId("heads").appendChild(b);
  return b;
});

function tokens(parentId, side) {
  return DATA.tokens.map((text, i) => {
    const el = document.createElement("div"), label = document.createElement("span");
    const cells = document.createElement("span");
    el.className = "token " + side;
    el.id = side + "-" + i;
    el.dataset.index = String(i);
    label.className = "text";
    label.textContent = text;
    cells.className = "cells";
    el.cells = COLOURS.map((colour, h) => {
      const cell = document.createElement("i");
      cell.dataset.head = String(h);
      cell.style.setProperty("--c", colour);
      cells.appendChild(cell);
      return cell;
    });
    // Cells sit beside the lines: after a query's text, before a key's.
    if (side === "query") el.append(label, cells); else el.append(cells, label);
    el.addEventListener("mouseenter", () => focus(side, i));
    el.addEventListener("mouseleave", unfocus);
    byId(parentId).appendChild(el);
    return el;
  });
}
const queries = tokens("queries", "query"), keys = tokens("keys", "key");

// Draw the lines of the current layer and shown heads whose weight reaches the threshold.
function draw() {
  const start = performance.now();
  unfocus();
  const heads = [...state.shown].sort((a, b) => a - b), l = state.layer, min = state.threshold;
  const hs = [], qs = [], ks = [], ws = [];
  for (const h of heads) {
    for (let q = 0; q < T; q++) {
      for (let k = 0; k < T; k++) {
        const w = weight(l, h, q, k);
        if (w >= min) { hs.push(h); qs.push(q); ks.push(k); ws.push(w); }
      }
    }
  }
  let order = null;
  if (ws.length > DATA.max_lines) {
    order = Array.from(ws.keys()).sort((a, b) => ws[b] - ws[a]).slice(0, DATA.max_lines);
    order.sort((a, b) => a - b);
  }
  const n = order ? order.length : ws.length, parts = new Array(n);
  drawnQ = new Array(n);
  drawnK = new Array(n);
  for (let j = 0; j < n; j++) {
    const i = order ? order[j] : j, h = hs[i], q = qs[i], k = ks[i], w = ws[i];
    drawnQ[j] = q;
    drawnK[j] = k;
    parts[j] = `<line x1="0" y1="${(q + 0.5) * ROW}" x2="${WIDTH}" y2="${(k + 0.5) * ROW}" ` +
      `stroke="${COLOURS[h]}" stroke-opacity="${w}" data-head="${h}" data-query="${q}" ` +
      `data-key="${k}" data-weight="${w}"></line>`;
  }
  svg.innerHTML = parts.join("");
  Object.assign(svg.dataset, { layer: String(l), heads: heads.join(","), threshold: String(min),
                               lines: String(n), total: String(ws.length) });
  byId("hidden-heads").textContent = [...RGB.keys()]
    .filter((h) => !state.shown.has(h))
    .map((h) => `.cells i[data-head="${h}"] { display: none; }`).join("\n");
  swatches.forEach((b, h) => b.setAttribute("aria-pressed", String(state.shown.has(h))));
  byId("threshold-value").textContent = min.toFixed(2);
  byId("count").textContent = `${n} lines` + (order ? ` (the strongest ${n} of ${ws.length}: ` +
    "raise the threshold to see the rest)" : "");
  document.body.dataset.renderMs = String(Math.round(performance.now() - start));
}

// Keep only the lines of one token and shade the other column's cells by its weights.
function focus(side, i) {
  unfocus();
  state.focus = { side, i };
  svg.classList.add("focus");
  svg.dataset[side] = String(i);
  const ends = side === "query" ? drawnQ : drawnK, lines = svg.children;
  for (let j = 0; j < ends.length; j++) {
    if (ends[j] === i) { lines[j].classList.add("lit"); lit.push(lines[j]); }
  }
  (side === "query" ? queries : keys)[i].classList.add("active");
  const other = side === "query" ? keys : queries;
  for (let j = 0; j < T; j++) {
    for (const h of state.shown) {
      const w = side === "query" ? weight(state.layer, h, i, j) : weight(state.layer, h, j, i);
      const cell = other[j].cells[h];
      cell.style.opacity = String(w);
      cell.dataset.weight = String(w);
      shaded.push(cell);
    }
  }
}

function unfocus() {
  if (state.focus === null) return;
  const { side, i } = state.focus;
  (side === "query" ? queries : keys)[i].classList.remove("active");
  svg.classList.remove("focus");
  delete svg.dataset[side];
  for (const line of lit) line.classList.remove("lit");
  for (const cell of shaded) { cell.style.opacity = ""; delete cell.dataset.weight; }
  lit = [];
  shaded = [];
  state.focus = null;
}

svg.addEventListener("mouseover", (event) => {
  const d = event.target.dataset;
  if (d === undefined || d.weight === undefined) return;
  byId("info").textContent =
    `head ${d.head}: ${DATA.tokens[d.query]} \u2192 ${DATA.tokens[d.key]} ${d.weight}`;
});
layerSel.addEventListener("change", () => { state.layer = Number(layerSel.value); draw(); });
slider.addEventListener("input", () => { state.threshold = Number(slider.value); draw(); });

// Model view: built when first shown, one pixel per (query, key), alpha = weight.
let gridBuilt = false;
function buildGrid() {
  const grid = byId("grid");
  grid.style.gridTemplateColumns = `repeat(${H + 1}, auto)`;
  const label = (text) => {
    const el = document.createElement("span");
    el.className = "label";
    el.textContent = text;
    grid.appendChild(el);
  };
  label("layer \\ head");
  for (let h = 0; h < H; h++) label(String(h));
  for (let l = 0; l < L; l++) {
    label(String(l));
    for (let h = 0; h < H; h++) {
      const button = document.createElement("button"), canvas = document.createElement("canvas");
      button.type = "button";
      button.className = "thumb";
      button.dataset.layer = String(l);
      button.dataset.head = String(h);
      button.title = `layer ${l}, head ${h}: click to open in the head view`;
      canvas.width = T;
      canvas.height = T;
      const ctx = canvas.getContext("2d"), img = ctx.createImageData(T, T), [r, g, b] = RGB[h];
      for (let q = 0, p = 0; q < T; q++) {
        for (let k = 0; k < T; k++, p += 4) {
          img.data[p] = r; img.data[p + 1] = g; img.data[p + 2] = b;
          img.data[p + 3] = Math.round(255 * weight(l, h, q, k));
        }
      }
      ctx.putImageData(img, 0, 0);
      button.appendChild(canvas);
      button.addEventListener("click", () => {
        state.layer = l;
        layerSel.value = String(l);
        state.shown = new Set([h]);
        show("head");
        draw();
      });
      grid.appendChild(button);
    }
  }
  gridBuilt = true;
}

function show(view) {
  if (view === "model" && !gridBuilt) buildGrid();
  byId("head-view").hidden = view !== "head";
  byId("model-view").hidden = view !== "model";
  byId("tab-head").setAttribute("aria-pressed", String(view === "head"));
  byId("tab-model").setAttribute("aria-pressed", String(view === "model"));
  document.body.dataset.view = view;
}
byId("tab-head").addEventListener("click", () => show("head"));
byId("tab-model").addEventListener("click", () => show("model"));
draw();
</script>
</body>
</html>
"""
