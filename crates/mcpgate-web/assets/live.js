// The live tail: new audit events over server-sent events, newest on top. Each event's
// id is its position in the log: a reconnect (the browser's, or Resume) continues from
// the last one shown, with no gap and no duplicate. Text only: never innerHTML.
(function () {
  "use strict";
  var root = document.getElementById("live");
  if (!root) return;
  var rows = document.getElementById("live-rows");
  var status = document.getElementById("live-status");
  var toggle = document.getElementById("live-toggle");
  var base = root.getAttribute("data-stream");
  var last = root.getAttribute("data-after");
  var source = null;
  var MAX = 1000;

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function add(e) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-event-id", e.id);
    var td = cell(tr, "");
    var a = document.createElement("a");
    a.href = "/audit/events/" + encodeURIComponent(e.id);
    a.textContent = e.time;
    td.appendChild(a);
    cell(tr, e.user);
    cell(tr, e.type);
    cell(tr, e.app);
    cell(tr, e.method);
    cell(tr, e.tool);
    cell(tr, e.decision, e.decision === "deny" ? "deny" : e.decision === "allow" ? "allow" : "");
    cell(tr, e.outcome);
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX) rows.removeChild(rows.lastChild);
  }

  function open() {
    var url = base + (base.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(last);
    source = new EventSource(url);
    source.addEventListener("audit", function (m) {
      last = m.lastEventId;
      add(JSON.parse(m.data));
    });
    source.addEventListener("end", function (m) {
      status.textContent = "Ended: " + m.data;
      source.close();
      source = null;
      toggle.disabled = true;
    });
    source.onopen = function () { status.textContent = "Live"; };
    source.onerror = function () {
      if (source) status.textContent = "Reconnecting…";
    };
    toggle.textContent = "Pause";
    root.setAttribute("data-state", "live");
  }

  function pause() {
    if (source) source.close();
    source = null;
    status.textContent = "Paused";
    toggle.textContent = "Resume";
    root.setAttribute("data-state", "paused");
  }

  toggle.addEventListener("click", function () {
    if (source) pause(); else open();
  });
  open();
})();
