/* Progressive enhancement for the Billing pages; every core action works without it.
   - tables in a form marked data-lmb-select-form get a "select all" checkbox;
   - the batch page polls its JSON and reloads when the batch has finished. */
(function () {
  "use strict";

  function selectBox(labelText, boxes, visibleLabel) {
    var all = document.createElement("input");
    all.type = "checkbox";
    all.id = "lmb-select-all-" + Math.random().toString(36).slice(2);
    var label = document.createElement("label");
    label.htmlFor = all.id;
    label.className = visibleLabel ? "" : "lmb-sr";
    label.textContent = labelText;
    all.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = all.checked; });
    });
    return [all, label];
  }

  function addSelectAll(form) {
    // The labels come translated from the page (the attributes' values).
    var pageLabel = form.getAttribute("data-lmb-select-form") || "Select all rows on this page";
    var kindLabel = form.getAttribute("data-lmb-select-kind") || "Select all rows of this kind";
    var slot = form.querySelector("[data-lmb-select-all-slot]");
    var tables = slot ? form.querySelectorAll("table") : [form.querySelector("table")];
    tables.forEach(function (table) {
      if (!table) { return; }
      var head = table.querySelector("thead th");
      var boxes = table.querySelectorAll("tbody input[type=checkbox]");
      if (!head || boxes.length === 0) { return; }
      // On a page of several tables (the Errors page's kinds) each selects its own rows.
      var parts = selectBox(slot ? kindLabel : pageLabel, boxes, false);
      head.textContent = "";
      head.appendChild(parts[0]);
      head.appendChild(parts[1]);
    });
    if (slot) {
      var every = form.querySelectorAll("tbody input[type=checkbox]");
      if (every.length === 0) { return; }
      var parts = selectBox(pageLabel, every, true);
      slot.className = "lmb-check-field";
      slot.appendChild(parts[0]);
      slot.appendChild(document.createTextNode(" "));
      slot.appendChild(parts[1]);
    }
  }

  function pollBatch(node) {
    if (node.getAttribute("data-lmb-finished") === "true") { return; }
    var url = node.getAttribute("data-lmb-batch-json");
    var status = document.getElementById("lmb-progress");
    var bar = node.querySelector("progress");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (data) {
          if (data.finished) { window.location.reload(); return; }
          if (status) {
            // The sentence comes translated, in the page's language, from the server.
            status.textContent = data.progress_text;
          }
          if (bar) { bar.max = data.total || 1; bar.value = data.done; }
          window.setTimeout(tick, 1000);
        })
        .catch(function () { /* the meta refresh still updates the page */ });
    }
    window.setTimeout(tick, 1000);
  }

  document.querySelectorAll("form[data-lmb-select-form]").forEach(addSelectAll);
  var batch = document.getElementById("lmb-batch");
  if (batch) { pollBatch(batch); }
})();
