"use strict";
// Builds the index from the JSON data element; names go into the DOM through textContent only.
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function picture(name) {
    const fig = el("figure"), a = el("a"), img = el("img");
    a.href = data.hrefs[name];
    img.src = data.hrefs[name];
    img.alt = name;
    a.append(img);
    fig.append(a, el("figcaption", "", name.split("/").pop()));
    return fig;
  }
  $("title").textContent = data.title;
  const scalars = (obj) => Object.entries(obj).filter(([, v]) => v === null || typeof v !== "object" || Array.isArray(v));
  function table(entries) {
    const t = el("table", "settings");
    for (const [key, value] of entries) {
      const row = el("tr");
      row.append(el("td", "", key), el("td", "", typeof value === "string" ? value : JSON.stringify(value)));
      t.append(row);
    }
    return t;
  }
  const settings = data.settings;
  $("settings").append(table(scalars(settings)));
  for (const [key, value] of Object.entries(settings)) {  // nested records (flags, versions, ...): folded
    if (value === null || typeof value !== "object" || Array.isArray(value)) continue;
    const box = el("details");
    box.append(el("summary", "", key), table(Object.entries(value)));
    box.open = key === "model_info" || key === "inputs";
    $("settings").append(box);
  }
  $("summary").textContent = data.files.length + " files" + (data.videos.length ? ", " + data.videos.length + " video(s)" : "") +
    (data.windows.length ? ", " + data.windows.length + " window(s) of pictures" : "");
  for (const v of data.videos) {
    const video = el("video");
    video.src = v.href;
    video.controls = true;
    video.preload = "metadata";
    video.muted = true;
    $("videos").append(el("h3", "", v.name), video);
  }
  $("videos-section").hidden = !data.videos.length;
  for (const w of data.windows) {
    const box = el("div", "window"), table = el("table"), head = el("tr");
    const rowsOf = (c) => Math.ceil(c.pictures.length / c.per_row);
    const depth = Math.max(...w.columns.map(rowsOf));
    for (const c of w.columns) head.append(el("th", "", c.folder));
    table.append(head);
    for (let r = 0; r < depth; r++) {
      const row = el("tr");
      for (const c of w.columns) {
        const cell = el("td", c.folder.includes("projection") ? "projection" : c.per_row > 1 ? "frames" : "");
        for (const name of c.pictures.slice(r * c.per_row, (r + 1) * c.per_row)) cell.append(picture(name));
        row.append(cell);
      }
      table.append(row);
    }
    box.append(el("h3", "", w.window), table);
    $("windows").append(box);
  }
  $("windows-section").hidden = !data.windows.length;
  for (const name of data.other_pictures) $("other").append(picture(name));
  $("other-section").hidden = !data.other_pictures.length;
  for (const f of data.files) {
    const li = el("li"), a = el("a", "", f.name);
    a.href = f.href;
    li.append(a);
    if (f.bytes !== null) li.append(el("span", "size", " (" + (f.bytes / 1024).toFixed(1) + " KB)"));
    $("files").append(li);
  }
  document.body.dataset.files = String(data.files.length);
})();
