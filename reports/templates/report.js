// Enhancements only: every table is plain HTML and readable without this script.
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); document.body.dataset.jsErrors = errors.join(" | "); });
  var params = new URLSearchParams(window.location.search);

  // Selection switch: without JS all three selection rules are shown; with it, one at a time.
  var form = document.getElementById("selection-switch");
  function showRule(rule) {
    document.querySelectorAll(".board").forEach(function (b) { b.hidden = b.dataset.rule !== rule; });
    document.body.dataset.selection = rule;
  }
  if (form) {
    form.hidden = false;
    form.addEventListener("change", function (e) { if (e.target.name === "selection") { showRule(e.target.value); } });
    var wanted = form.querySelector('input[value="' + (params.get("selection") || "val") + '"]') ||
                 form.querySelector('input[value="val"]');
    wanted.checked = true;
    showRule(wanted.value);
  }

  // Sorting: each row group (<tbody>: our row and the paper's beside it) moves as one.
  function cellValue(tbody, col) {
    var cell = tbody.rows[0].cells[col];
    if (!cell) { return null; }
    var raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    return raw;
  }
  function sortTable(table, col, dir) {
    var th = table.tHead.rows[0].cells[col];
    var numeric = th.dataset.type !== "text";
    var bodies = Array.prototype.slice.call(table.tBodies);
    bodies.sort(function (a, b) {
      var va = cellValue(a, col), vb = cellValue(b, col);
      var ea = va === null || va === "", eb = vb === null || vb === "";
      if (ea || eb) { return ea === eb ? 0 : (ea ? 1 : -1); }   // empty cells last either way
      var na = parseFloat(va), nb = parseFloat(vb);
      var cmp = (numeric && !isNaN(na) && !isNaN(nb)) ? na - nb : String(va).localeCompare(String(vb));
      return dir === "asc" ? cmp : -cmp;
    });
    bodies.forEach(function (b) { table.appendChild(b); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    table.dataset.sortedBy = col + ":" + dir;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      var toggle = function () {
        var now = th.getAttribute("aria-sort");
        var first = th.dataset.type === "text" ? "asc" : "desc";     // numbers: best first
        var dir = now ? (now === "descending" ? "asc" : "desc") : first;
        sortTable(table, col, dir);
      };
      th.addEventListener("click", toggle);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } });
    });
  });
  // ?sort=<column>&dir=asc|desc sorts every leaderboard on load; ?click=<header id> clicks one header
  // (a scripted click, used by the browser test).
  if (params.get("sort") !== null) {
    document.querySelectorAll("table.leaderboard").forEach(function (t) {
      var col = parseInt(params.get("sort"), 10);
      if (col >= 0 && col < t.tHead.rows[0].cells.length) { sortTable(t, col, params.get("dir") === "asc" ? "asc" : "desc"); }
    });
  }
  if (params.get("click")) {
    var target = document.getElementById(params.get("click"));
    if (target) { target.click(); }
  }

  // Details popover: a click (or Enter) on a cell shows its title as a box.
  var pop = document.getElementById("popover");
  function showDetails(cell) {
    var text = cell.getAttribute("title");
    if (!text) { return; }
    var rect = cell.getBoundingClientRect();
    pop.textContent = text;
    pop.hidden = false;
    pop.style.left = Math.max(8, rect.left + window.scrollX) + "px";
    pop.style.top = (rect.bottom + window.scrollY + 4) + "px";
  }
  document.addEventListener("click", function (e) {
    var cell = e.target.closest ? e.target.closest("td[title]") : null;
    if (cell && cell.getAttribute("title")) { showDetails(cell); } else if (!e.target.closest || !e.target.closest("#popover")) { pop.hidden = true; }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { pop.hidden = true; }
    if (e.key === "Enter" && e.target.matches && e.target.matches("td[title]")) { showDetails(e.target); }
  });

  // Images: record any that did not load (a broken plot link) for readers and tests.
  window.addEventListener("load", function () {
    var broken = Array.prototype.filter.call(document.images, function (img) { return !img.complete || img.naturalWidth === 0; });
    document.body.dataset.imagesLoaded = String(document.images.length - broken.length);
    document.body.dataset.imagesBroken = broken.map(function (img) { return img.getAttribute("src"); }).join(" ");
  });
})();
