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
    img.loading = "lazy";
    a.append(img);
    fig.append(a, el("figcaption", "", name.split("/").pop()));
    return fig;
  }
  $("title").textContent = data.title;
  for (const [key, value] of Object.entries(data.settings)) {
    const row = el("tr"), cell = el("td");
    cell.append(value !== null && typeof value === "object" ? el("pre", "", JSON.stringify(value, null, 1))
      : el("span", "", String(value)));
    row.append(el("td", "", key), cell);
    $("settings").append(row);
  }
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
    const depth = Math.max(...w.columns.map((c) => c.pictures.length));
    for (const c of w.columns) head.append(el("th", "", c.folder));
    table.append(head);
    for (let r = 0; r < depth; r++) {
      const row = el("tr");
      for (const c of w.columns) {
        const cell = el("td");
        if (r < c.pictures.length) cell.append(picture(c.pictures[r]));
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
