// The live watch viewer (/watch/) over the websocket /ws/watch/ (console/consumers.py).
// Events are queued as they arrive and drawn at most once per animation frame, newest first.
// The table keeps config.max_rows rows (older ones are dropped and counted) but only the rows
// in view are in the DOM (fixed-height rows between two spacers), so a frame costs the same at
// 1 or 1,000 events a second; the download keeps the config.max_captured most recent events.
// After a dropped socket, pause or resume, the watch starts again at the revision after the
// last one shown: etcd replays what was missed.
(function () {
  "use strict";
  var L = window.ConsoleLive;
  var cfgEl = document.getElementById("watch-config");
  if (!L || !cfgEl) { return; }
  var cfg = JSON.parse(cfgEl.textContent);
  function $(id) { return document.getElementById(id); }

  var rowHeight = 28;     // px, as .events tr.ev in console.css; measured once rows exist
  var measured = false;
  var OVERSCAN = 8;
  var form = $("watch-form");
  var tbody = document.querySelector("#w-table tbody");
  var scroller = $("w-scroll");
  var topSpacer = $("w-top");
  var bottomSpacer = $("w-bottom");
  var kept = [];          // the rows of the table, oldest first
  var watchId = 0;        // the page's id of the watch it wants; older messages are ignored
  var spec = null;        // what the form asked for
  var active = false;     // a watch should be running (unless paused)
  var paused = false;
  var nextRev = 0;        // first revision not shown yet (0: not known yet)
  var queue = [];         // received, not drawn yet
  var captured = [];      // for the download
  var capturedDropped = 0;
  var total = 0;
  var lastRev = 0;
  var drawScheduled = false;
  var totalAtTick = 0;

  var sock = L.open(cfg.ws, { open: onOpen, message: onMessage, closed: onClosed });

  function setState(text, cls) {
    var s = $("w-state");
    s.textContent = text;
    s.className = "badge state-" + (cls || text);
  }

  function banner(text, actions) {
    var box = $("w-banner");
    $("w-banner-text").textContent = text;
    var holder = $("w-banner-actions");
    holder.textContent = "";
    (actions || []).forEach(function (a) {
      var b = L.el("button", "small secondary", a.label);
      b.type = "button";
      if (a.id) { b.id = a.id; }
      b.addEventListener("click", a.run);
      holder.appendChild(b);
    });
    box.hidden = false;
  }

  function hideBanner() { $("w-banner").hidden = true; }

  function readForm() {
    var rev = parseInt($("w-rev").value || "0", 10);
    return {
      key: $("w-key").value,
      prefix: $("w-prefix").checked,
      start_revision: rev > 0 ? rev : 0,
      filter: $("w-filter").value,
      prev_kv: $("w-prev").checked
    };
  }

  function start(fromRev) {
    watchId += 1;
    active = true;
    paused = false;
    $("w-pause").disabled = false;
    $("w-pause").textContent = "Pause";
    setState("starting");
    var msg = {
      type: "start", watch: watchId, key: spec.key, prefix: spec.prefix,
      start_revision: fromRev, filter: spec.filter, prev_kv: spec.prev_kv
    };
    if (!sock.send(msg)) { setState("waiting for the connection", "waiting"); }
  }

  function resumeRevision() { return nextRev || spec.start_revision; }

  function onOpen() {
    if (active && !paused && spec) { start(resumeRevision()); }
  }

  function onClosed() {
    if (active && !paused) { setState("reconnecting"); }
  }

  function onMessage(msg) {
    if (msg.watch !== undefined && msg.watch !== null && msg.watch !== watchId) { return; }
    if (msg.type === "started") {
      nextRev = Math.max(nextRev, msg.start_revision);
      setState("live");
      hideBanner();
    } else if (msg.type === "events") {
      receive(msg.events);
    } else if (msg.type === "progress") {
      nextRev = Math.max(nextRev, msg.revision + 1);
    } else if (msg.type === "compacted") {
      active = false;
      setState("stopped");
      $("w-pause").disabled = true;
      var earliest = msg.compact_revision;
      banner(msg.message + ". Events before revision " + earliest + " are gone.", [
        { label: "Watch from revision " + earliest, id: "w-from-earliest", run: function () { nextRev = earliest; start(earliest); } },
        { label: "Watch from now", id: "w-from-now", run: function () { nextRev = 0; spec.start_revision = 0; start(0); } }
      ]);
    } else if (msg.type === "error") {
      if (msg.retrying) {
        setState("retrying");
        banner("The cluster failed the watch (" + msg.message + "); trying again in " + msg.retrying + " s.");
      } else {
        if (msg.watch === watchId) { active = false; setState("stopped"); $("w-pause").disabled = true; }
        banner(msg.message);
      }
    }
  }

  function receive(events) {
    var floor = nextRev;
    for (var i = 0; i < events.length; i++) {
      var ev = events[i];
      if (ev.rev < floor) { continue; }  // already shown (never expected: belt and braces)
      queue.push(ev);
      captured.push(ev);
      total += 1;
      lastRev = ev.rev;
    }
    if (lastRev >= nextRev) { nextRev = lastRev + 1; }
    if (queue.length > 2 * cfg.max_rows) {  // a hidden tab draws nothing: keep it bounded
      queue.splice(0, queue.length - cfg.max_rows);
    }
    if (captured.length > cfg.max_captured + 1000) {
      var extra = captured.length - cfg.max_captured;
      captured.splice(0, extra);
      capturedDropped += extra;
    }
    schedule();
  }

  function preview(kv) {
    if (!kv) { return ""; }
    var text = kv.value_enc === "base64" ? "base64: " + kv.value : kv.value;
    if (text.length > 200) { text = text.slice(0, 200) + "…"; } else if (kv.truncated) { text += "…"; }
    return text.replace(/\s+/g, " ");
  }

  function row(ev) {
    var tr = L.el("tr", "ev " + (ev.type === "PUT" ? "ev-put" : "ev-delete"));
    tr.appendChild(L.el("td", "num", ev.rev));
    var type = L.el("td");
    type.appendChild(L.el("span", "badge " + (ev.type === "PUT" ? "ev-put" : "ev-delete"), ev.type));
    tr.appendChild(type);
    var keyCell = L.el("td", "entry");
    var link = L.el("a", "key-link", ev.key_enc === "base64" ? "base64: " + ev.key : ev.key);
    link.href = cfg.key_url + ev.token + "/";
    link.title = link.textContent;
    keyCell.appendChild(link);
    tr.appendChild(keyCell);
    var value = L.el("td", "preview");
    if (ev.type === "PUT") {
      value.appendChild(L.el("code", null, preview(ev)));
    } else {
      value.appendChild(L.el("em", "muted", "deleted"));
    }
    if (ev.prev) {
      value.appendChild(L.el("span", "prev", " ← " + preview(ev.prev)));
    }
    value.title = value.textContent;
    tr.appendChild(value);
    tr.appendChild(L.el("td", null, ev.type === "PUT" ? ev.lease : (ev.prev ? ev.prev.lease : "")));
    return tr;
  }

  function schedule() {
    if (!drawScheduled) {
      drawScheduled = true;
      window.requestAnimationFrame(draw);
    }
  }

  function draw() {
    drawScheduled = false;
    var added = queue.length;
    if (added) {
      kept = kept.length + added > cfg.max_rows ? kept.concat(queue).slice(-cfg.max_rows) : kept.concat(queue);
      queue = [];
      $("w-empty").hidden = true;
      if (scroller.scrollTop > 0) {  // reading older rows: keep them in place
        scroller.scrollTop += Math.min(added, cfg.max_rows) * rowHeight;
      }
    }
    var n = kept.length;
    var first = Math.max(0, Math.floor(scroller.scrollTop / rowHeight) - OVERSCAN);
    var last = Math.min(n, first + Math.ceil(scroller.clientHeight / rowHeight) + 2 * OVERSCAN);
    while (topSpacer.nextSibling !== bottomSpacer) { tbody.removeChild(topSpacer.nextSibling); }
    var frag = document.createDocumentFragment();
    for (var i = first; i < last; i++) { frag.appendChild(row(kept[n - 1 - i])); }  // newest first
    tbody.insertBefore(frag, bottomSpacer);
    if (last > first && !measured) {  // every row is one line: measure one, once
      rowHeight = topSpacer.nextSibling.getBoundingClientRect().height || rowHeight;
      measured = true;
    }
    topSpacer.style.height = (first * rowHeight) + "px";
    bottomSpacer.style.height = ((n - last) * rowHeight) + "px";
    stats();
  }

  function stats() {
    $("w-total").textContent = total;
    $("w-last").textContent = lastRev ? lastRev : "–";
    $("w-rows").textContent = kept.length;
    $("w-dropped").textContent = total - kept.length - queue.length;  // older rows let go
  }

  function clear() {
    queue = [];
    kept = [];
    captured = [];
    capturedDropped = 0;
    total = 0;
    totalAtTick = 0;
    $("w-empty").hidden = false;
    scroller.scrollTop = 0;
    draw();
  }

  function download() {
    var doc = {
      watch: spec,
      exported_at: new Date().toISOString(),
      next_revision: nextRev,
      older_events_dropped: capturedDropped,
      events: captured.slice(-cfg.max_captured)
    };
    var blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
    var a = L.el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "watch-" + (lastRev || "empty") + ".json";
    document.body.appendChild(a);
    a.click();
    window.setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function remember() {
    var q = new URLSearchParams();
    q.set("key", spec.key);
    if (spec.prefix) { q.set("prefix", "1"); }
    if (spec.start_revision) { q.set("rev", String(spec.start_revision)); }
    if (spec.filter !== "all") { q.set("filter", spec.filter); }
    if (spec.prev_kv) { q.set("prev_kv", "1"); }
    window.history.replaceState(null, "", "?" + q.toString());
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    spec = readForm();
    if (!spec.key && !spec.prefix) {
      banner("Give a key, or tick Prefix (an empty prefix watches every key).");
      return;
    }
    hideBanner();
    clear();
    nextRev = 0;
    lastRev = 0;
    remember();
    start(spec.start_revision);
  });

  $("w-pause").addEventListener("click", function () {
    if (!spec) { return; }
    if (!paused) {
      paused = true;
      watchId += 1;  // whatever is still in flight is dropped: resuming replays it
      sock.send({ type: "stop" });
      $("w-pause").textContent = "Resume";
      setState("paused");
    } else {
      start(resumeRevision());
    }
  });
  $("w-clear").addEventListener("click", clear);
  scroller.addEventListener("scroll", schedule, { passive: true });
  $("w-download").addEventListener("click", download);

  window.setInterval(function () {
    $("w-rate").textContent = total - totalAtTick;
    totalAtTick = total;
  }, 1000);

  if (cfg.autostart) { form.requestSubmit(); }
})();
