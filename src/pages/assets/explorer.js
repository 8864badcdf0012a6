"use strict";
// The explorer page: every string shown comes from the JSON data element and goes into the DOM
// through textContent (or a URL attribute built by the writer), never as markup.
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const n = data.shown, k = data.k;
  const TYPES = { f4: Float32Array, i4: Int32Array, i2: Int16Array, u2: Uint16Array };
  function column(name) {
    const c = data.columns[name], bin = atob(c.b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TYPES[c.dtype](bytes.buffer);
  }
  const X = column("x"), Y = column("y"), SRC = column("source"), LAB = column("label"), CLU = column("cluster");
  const THUMB = column("thumb"), WIN = column("window"), TOK = column("token"), F0 = column("f0"), F1 = column("f1");
  const T0 = column("t0"), T1 = column("t1"), TIME = column("time"), NBR = column("nbr"), SIM = column("sim");
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#9edae5", "#dbdb8d", "#393b79"];
  const GREY = "#bbbbbb";
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---------------------------------------------------------------- rows as text
  function rowName(i) {
    let name = data.sources[SRC[i]].path;
    if (WIN[i] >= 0) name += "#window" + WIN[i];
    if (TOK[i] >= 0) name += "#t" + TOK[i];
    return name;
  }
  const labelOf = (i) => (LAB[i] >= 0 ? data.labels[LAB[i]] : "");
  function fields(i) {
    const out = [["path", rowName(i)], ["source", data.sources[SRC[i]].kind]];
    if (F0[i] >= 0) out.push(["frames", F0[i] === F1[i] || F1[i] < 0 ? String(F0[i]) : F0[i] + "–" + F1[i]]);
    if (!isNaN(T0[i])) out.push(["time", T0[i].toFixed(2) + "–" + T1[i].toFixed(2) + " s"]);
    if (LAB[i] >= 0) out.push(["label", labelOf(i)]);
    out.push(["cluster", String(CLU[i])]);
    return out;
  }
  function describe(parent, i) {
    for (const [key, value] of fields(i)) {
      const line = el("div");
      line.append(el("span", "field", key + ": "), el("span", "value " + key, value));
      parent.append(line);
    }
  }
  function thumbnail(i) {
    if (THUMB[i] < 0) return el("div", "noimg");
    const img = el("img");
    img.alt = "";
    img.src = data.thumbs[THUMB[i]];
    return img;
  }
  function sourceLink(i) {
    const s = data.sources[SRC[i]];
    if (!s.href) return el("span", "", "(no source path)");
    const a = el("a", "source-link", "open the source file");
    a.href = s.href + (s.kind === "video" && !isNaN(T0[i]) ? "#t=" + T0[i].toFixed(2) : "");
    a.target = "_blank";
    a.rel = "noopener";
    return a;
  }

  // ---------------------------------------------------------------- header
  $("title").textContent = "Explorer: " + n + " of " + data.table_rows + " rows of the table " + data.table;
  $("summary").textContent = "model " + data.model + ", pooling " + data.pooling + ", " + data.dim +
    "-d vectors; map: PCA → UMAP (cosine; PCA alone under 10 rows); " + data.thumbnails + " thumbnails; " + data.labelled +
    " labelled rows; " + k + " nearest rows per row (exact cosine, among the rows shown)";
  document.body.dataset.rows = String(n);

  // ---------------------------------------------------------------- colours
  const MODES = [["label", "label"], ["source", "source"], ["time", "time in video"], ["cluster", "cluster"]]
    .filter(([m]) => m !== "label" || data.labels.length);
  const select = $("color-by");
  for (const [value, text] of MODES) {
    const o = el("option", "", text);
    o.value = value;
    select.append(o);
  }
  select.value = MODES.some(([m]) => m === data.color_by) ? data.color_by : MODES[0][0];

  function coloring(mode) {  // {bin: Int32Array (-1 = grey), colors, legend: [[colour, text]]}
    const bin = new Int32Array(n);
    let colors = PALETTE, legend = [];
    if (mode === "time") {
      colors = data.ramp;
      for (let i = 0; i < n; i++) bin[i] = isNaN(TIME[i]) ? -1 : Math.min(colors.length - 1, Math.floor(TIME[i] * colors.length));
      legend = [[colors[0], "start of its video"], [colors[colors.length - 1], "end of its video"], [GREY, "image (no time)"]];
    } else {
      const code = mode === "label" ? LAB : mode === "cluster" ? CLU : null;
      for (let i = 0; i < n; i++) {
        const c = code ? code[i] : data.sources[SRC[i]].group;
        bin[i] = c < 0 ? -1 : c % PALETTE.length;
      }
      const names = mode === "label" ? data.labels : mode === "source" ? data.groups.map((g) => g.kind + ": " + g.path)
        : Array.from({ length: CLU.reduce((a, b) => Math.max(a, b), 0) + 1 }, (_, c) => "cluster " + c);
      legend = names.map((name, c) => [PALETTE[c % PALETTE.length], name]);
      if (mode === "label") legend.push([GREY, "(no label)"]);
    }
    return { bin, colors, legend };
  }

  // ---------------------------------------------------------------- map
  const canvas = $("map"), ctx = canvas.getContext("2d"), tooltip = $("tooltip");
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let i = 0; i < n; i++) {
    minX = Math.min(minX, X[i]); maxX = Math.max(maxX, X[i]);
    minY = Math.min(minY, Y[i]); maxY = Math.max(maxY, Y[i]);
  }
  const view = { zoom: 1, panX: 0, panY: 0 };
  const SX = new Float32Array(n), SY = new Float32Array(n);
  let color = coloring(select.value), match = null, selected = -1, drawn = 0;
  const CELL = 8;
  let cellStart = new Int32Array(1), cellItems = new Int32Array(0), cols = 1, rows = 1;

  function fit() {
    const w = canvas.clientWidth, h = canvas.clientHeight, pad = 16;
    const sx = (w - 2 * pad) / Math.max(maxX - minX, 1e-9), sy = (h - 2 * pad) / Math.max(maxY - minY, 1e-9);
    const s = Math.min(sx, sy) * view.zoom;
    return { s, cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, w, h };
  }
  function project() {
    const f = fit();
    for (let i = 0; i < n; i++) {
      SX[i] = (X[i] - f.cx) * f.s + f.w / 2 + view.panX;
      SY[i] = f.h / 2 - (Y[i] - f.cy) * f.s + view.panY;
    }
    // points bucketed by screen cell (counting sort), for hover and click
    cols = Math.ceil(f.w / CELL) + 1; rows = Math.ceil(f.h / CELL) + 1;
    const cell = new Int32Array(n), count = new Int32Array(cols * rows + 1);
    for (let i = 0; i < n; i++) {
      const cx = Math.floor(SX[i] / CELL), cy = Math.floor(SY[i] / CELL);
      cell[i] = cx >= 0 && cy >= 0 && cx < cols && cy < rows ? cy * cols + cx : -1;
      if (cell[i] >= 0) count[cell[i] + 1]++;
    }
    for (let c = 0; c < cols * rows; c++) count[c + 1] += count[c];
    cellStart = count.slice();
    cellItems = new Int32Array(count[cols * rows]);
    for (let i = 0; i < n; i++) if (cell[i] >= 0) cellItems[count[cell[i]]++] = i;
  }
  function draw() {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    project();
    const size = n > 20000 ? 2 : n > 2000 ? 3 : 6, half = size / 2;
    const byBin = new Map();
    for (let i = 0; i < n; i++) {
      const b = color.bin[i];
      if (!byBin.has(b)) byBin.set(b, []);
      byBin.get(b).push(i);
    }
    drawn = 0;
    for (const pass of match ? [false, true] : [null]) {  // with a search: the others faint, first
      ctx.globalAlpha = pass === false ? 0.12 : 0.85;
      for (const [b, members] of byBin) {
        ctx.fillStyle = b < 0 ? GREY : color.colors[b];
        for (const i of members) {
          if (pass !== null && match[i] !== (pass ? 1 : 0)) continue;
          ctx.fillRect(SX[i] - half, SY[i] - half, size, size);
          drawn++;
        }
      }
    }
    ctx.globalAlpha = 1;
    if (selected >= 0) {
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000";
      for (let j = 0; j < k; j++) {
        const m = NBR[selected * k + j];
        if (m >= 0) { ctx.beginPath(); ctx.arc(SX[m], SY[m], size + 2, 0, 2 * Math.PI); ctx.stroke(); }
      }
      ctx.strokeStyle = "#e00";
      ctx.beginPath(); ctx.arc(SX[selected], SY[selected], size + 5, 0, 2 * Math.PI); ctx.stroke();
    }
    document.body.dataset.pointsDrawn = String(drawn);
  }
  function nearest(mx, my, radius = 8) {
    let best = -1, bestD = radius * radius;
    const cx = Math.floor(mx / CELL), cy = Math.floor(my / CELL), reach = Math.ceil(radius / CELL);
    for (let y = cy - reach; y <= cy + reach; y++) {
      for (let x = cx - reach; x <= cx + reach; x++) {
        if (x < 0 || y < 0 || x >= cols || y >= rows) continue;
        const c = y * cols + x;
        for (let p = cellStart[c]; p < cellStart[c + 1]; p++) {
          const i = cellItems[p], d = (SX[i] - mx) ** 2 + (SY[i] - my) ** 2;
          if (d < bestD && (!match || match[i])) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- legend, tooltip, selection
  function legend() {
    const box = $("legend");
    box.replaceChildren(el("h2", "", "Colour: " + select.options[select.selectedIndex].text));
    for (const [c, text] of color.legend) {
      const line = el("div");
      const sw = el("span", "swatch");
      sw.style.background = c;
      line.append(sw, el("span", "", text));
      box.append(line);
    }
  }
  function showTooltip(i, mx, my) {
    if (i < 0) { tooltip.hidden = true; delete tooltip.dataset.row; return; }
    tooltip.replaceChildren(thumbnail(i));
    describe(tooltip, i);
    tooltip.dataset.row = String(i);
    tooltip.hidden = false;
    const wrap = canvas.clientWidth;
    tooltip.style.left = (mx + 330 > wrap ? Math.max(0, mx - 330) : mx + 14) + "px";
    tooltip.style.top = (my + 14) + "px";
  }
  function selectRow(i) {
    selected = i;
    const box = $("selection");
    box.replaceChildren();
    if (i < 0) { draw(); return; }
    box.append(el("h2", "", "Selected row"), thumbnail(i));
    describe(box, i);
    box.append(sourceLink(i), el("h2", "", "Nearest rows (cosine similarity)"));
    const list = el("div", "neighbours");
    for (let j = 0; j < k; j++) {
      const m = NBR[i * k + j];
      if (m < 0) continue;
      const item = el("div", "neighbour"), text = el("div");
      text.append(el("div", "sim", (SIM[i * k + j] * 2 / data.sim_steps - 1).toFixed(4)), el("div", "name", rowName(m)));
      if (LAB[m] >= 0) text.append(el("div", "label", labelOf(m)));
      text.append(sourceLink(m));
      item.append(thumbnail(m), text);
      item.dataset.row = String(m);
      item.addEventListener("click", (e) => { if (e.target.tagName !== "A") selectRow(m); });
      list.append(item);
    }
    box.append(list);
    box.dataset.row = String(i);
    draw();
  }

  // ---------------------------------------------------------------- events
  const mouse = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  let drag = null;
  canvas.addEventListener("mousemove", (e) => {
    const [mx, my] = mouse(e);
    if (drag) {
      view.panX = drag.panX + mx - drag.x; view.panY = drag.panY + my - drag.y; drag.moved = true;
      draw();
      return;
    }
    showTooltip(nearest(mx, my), mx, my);
  });
  canvas.addEventListener("mouseleave", () => showTooltip(-1));
  canvas.addEventListener("mousedown", (e) => { const [x, y] = mouse(e); drag = { x, y, panX: view.panX, panY: view.panY, moved: false }; });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved && e.target === canvas) { const [mx, my] = mouse(e); const i = nearest(mx, my); if (i >= 0) selectRow(i); }
    drag = null;
  });
  canvas.addEventListener("dblclick", () => { view.zoom = 1; view.panX = 0; view.panY = 0; draw(); });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [mx, my] = mouse(e), factor = Math.exp(-e.deltaY * 0.0015);
    const w = canvas.clientWidth, h = canvas.clientHeight;
    view.panX = (view.panX + w / 2 - mx) * factor + mx - w / 2;  // keep the point under the mouse
    view.panY = (view.panY + h / 2 - my) * factor + my - h / 2;
    view.zoom *= factor;
    draw();
  }, { passive: false });
  select.addEventListener("change", () => { color = coloring(select.value); legend(); draw(); });
  const haystack = [];
  $("search").addEventListener("input", (e) => {
    const q = e.target.value.trim().toLowerCase();
    if (!q) { match = null; $("matches").textContent = ""; draw(); return; }
    if (!haystack.length) for (let i = 0; i < n; i++) haystack.push((rowName(i) + "\n" + labelOf(i)).toLowerCase());
    match = new Uint8Array(n);
    let found = 0;
    for (let i = 0; i < n; i++) if (haystack[i].includes(q)) { match[i] = 1; found++; }
    $("matches").textContent = found + " of " + n + " rows match";
    $("matches").dataset.count = String(found);
    draw();
  });
  window.addEventListener("resize", draw);

  legend();
  draw();
  // for tests and scripts: where a row is drawn (CSS pixels from the canvas' top left), and selection
  window.explorer = { data, rowName, screenPosition: (i) => [SX[i], SY[i]], select: selectRow,
    pointsDrawn: () => drawn };
})();
