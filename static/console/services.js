// The service registry pages (/services/ and /services/s/<name>/), live over /ws/services/
// (console/consumers.py ServicesConsumer). The page keeps every instance it knows with the
// time its lease runs out (re-read by the server every second) and counts down locally; each
// change goes into the "recent changes" feed, which starts with the server's recent changes.
// After a reconnection the new snapshot is compared with what the page knew, so changes the
// server did not see (it restarted) are listed too.
(function () {
  "use strict";
  var L = window.ConsoleLive;
  var cfgEl = document.getElementById("services-config");
  if (!L || !cfgEl) { return; }
  var cfg = JSON.parse(cfgEl.textContent);
  var FEED_MAX = 200;

  var instances = {};     // "service\u0000id" -> instance (+ deadline: ms when the lease ends)
  var services = {};      // service -> {last: seconds since epoch} (every service ever seen)
  var feed = [];          // newest first
  var seen = {};          // feed entries already listed (revision, instance, kind)
  var synced = false;     // a snapshot has arrived
  var drawScheduled = false;

  var table = document.querySelector(cfg.service ? "#inst-table tbody" : "#svc-table tbody");
  var feedEl = document.getElementById("svc-feed");
  var bannerEl = document.getElementById("svc-banner");

  function keyOf(inst) { return inst.service + "\u0000" + inst.id; }

  function withDeadline(inst) {
    inst.deadline = (inst.ttl !== null && inst.ttl !== undefined && inst.ttl >= 0)
      ? Date.now() + inst.ttl * 1000 : null;
    return inst;
  }

  function note(kind, inst, at, extra) {
    var id = (extra && extra.revision) ? extra.revision + "\u0000" + keyOf(inst) + "\u0000" + kind : null;
    if (id) {
      if (seen[id]) { return; }
      seen[id] = true;
    }
    feed.unshift({ kind: kind, inst: inst, at: at || Date.now() / 1000, by: extra && extra.by, when: extra && extra.when, revision: extra && extra.revision });
    if (feed.length > FEED_MAX) { feed.length = FEED_MAX; }
    services[inst.service] = { last: at || Date.now() / 1000 };
  }

  function explained(inst, removed) {  // the feed already says why it went (or came)
    return feed.some(function (f) {
      if (keyOf(f.inst) !== keyOf(inst)) { return false; }
      return removed ? (f.kind !== "registered" && f.kind !== "updated" && f.revision >= inst.revision)
        : ((f.kind === "registered" || f.kind === "updated") && f.revision === inst.revision);
    });
  }

  function onMessage(msg) {
    if (msg.type === "snapshot") {
      (msg.recent || []).forEach(function (c) {
        note(c.kind, c.instance, c.at, { by: c.by, revision: c.revision });
      });
      var fresh = {};
      msg.instances.forEach(function (i) { fresh[keyOf(i)] = withDeadline(i); services[i.service] = services[i.service] || {}; });
      if (synced) {  // reconnected: what changed while the page was away
        Object.keys(instances).forEach(function (k) {
          if (!fresh[k] && !explained(instances[k], true)) { note("removed", instances[k], null, { when: "while disconnected" }); }
        });
        Object.keys(fresh).forEach(function (k) {
          if (!instances[k] && !explained(fresh[k], false)) { note("registered", fresh[k], null, { when: "while disconnected" }); }
        });
      }
      instances = fresh;
      synced = true;
      bannerEl.hidden = true;
      schedule();
    } else if (msg.type === "change") {
      var inst = withDeadline(msg.instance);
      if (msg.kind === "registered" || msg.kind === "updated") {
        instances[keyOf(inst)] = inst;
      } else {
        delete instances[keyOf(inst)];
      }
      note(msg.kind, inst, msg.at, { by: msg.by, revision: msg.revision });
      schedule();
    } else if (msg.type === "ttl") {
      Object.keys(instances).forEach(function (k) {
        var i = instances[k];
        if (i.lease && Object.prototype.hasOwnProperty.call(msg.leases, i.lease)) {
          i.ttl = msg.leases[i.lease];
          withDeadline(i);
        }
      });
      tick();
    } else if (msg.type === "error") {
      bannerEl.textContent = msg.message + (msg.retrying ? " (trying again in " + msg.retrying + " s)" : "");
      bannerEl.hidden = false;
    }
  }

  function schedule() {
    if (!drawScheduled) {
      drawScheduled = true;
      window.requestAnimationFrame(function () { drawScheduled = false; draw(); });
    }
  }

  function sortedInstances() {
    return Object.keys(instances).map(function (k) { return instances[k]; })
      .sort(function (a, b) { return a.service === b.service ? (a.id < b.id ? -1 : 1) : (a.service < b.service ? -1 : 1); });
  }

  function serviceUrl(name) { return cfg.service_url + "s/" + encodeURIComponent(name) + "/"; }

  function draw() {
    if (cfg.service) { drawInstances(); } else { drawServices(); }
    drawFeed();
    tick();
  }

  function drawServices() {
    var counts = {};
    Object.keys(services).forEach(function (s) { counts[s] = 0; });
    sortedInstances().forEach(function (i) { counts[i.service] = (counts[i.service] || 0) + 1; });
    var names = Object.keys(counts).sort();
    table.textContent = "";
    if (!names.length) {
      var tr0 = L.el("tr", "empty-row");
      var td0 = L.el("td", "muted empty", "No services are registered.");
      td0.colSpan = 3;
      tr0.appendChild(td0);
      table.appendChild(tr0);
      return;
    }
    names.forEach(function (name) {
      var tr = L.el("tr");
      tr.dataset.service = name;
      var td = L.el("td");
      var a = L.el("a", "entry service-link", name);
      a.href = serviceUrl(name);
      td.appendChild(a);
      tr.appendChild(td);
      tr.appendChild(L.el("td", "num count" + (counts[name] ? "" : " zero"), counts[name]));
      var last = services[name] && services[name].last;
      tr.appendChild(L.el("td", "muted", last ? L.clock(last) : "–"));
      table.appendChild(tr);
    });
  }

  function drawInstances() {
    var list = sortedInstances();
    document.getElementById("inst-count").textContent = list.length;
    table.textContent = "";
    if (!list.length) {
      var tr0 = L.el("tr", "empty-row");
      var td0 = L.el("td", "muted empty", "No live instances.");
      td0.colSpan = 8;
      tr0.appendChild(td0);
      table.appendChild(tr0);
      return;
    }
    list.forEach(function (i) {
      var tr = L.el("tr");
      tr.dataset.instance = i.id;
      tr.dataset.key = keyOf(i);
      var idCell = L.el("td");
      var a = L.el("a", "entry", i.id);
      a.href = cfg.key_url + i.token + "/";
      idCell.appendChild(a);
      tr.appendChild(idCell);
      var addr = L.el("td");
      addr.appendChild(L.el("code", null, i.address));
      tr.appendChild(addr);
      tr.appendChild(L.el("td", "num", i.port));
      var meta = L.el("td");
      Object.keys(i.metadata || {}).sort().forEach(function (k) {
        var v = i.metadata[k];
        meta.appendChild(L.el("span", "chip", k + "=" + (typeof v === "string" ? v : JSON.stringify(v))));
        meta.appendChild(document.createTextNode(" "));
      });
      tr.appendChild(meta);
      tr.appendChild(L.el("td", "ttl"));
      tr.appendChild(L.el("td", "age"));
      var lease = L.el("td");
      lease.appendChild(L.el("code", null, i.lease || "none"));
      tr.appendChild(lease);
      if (cfg.can_edit) {
        var act = L.el("td");
        var b = L.el("a", "button small danger deregister", "Deregister");
        b.href = cfg.deregister_url + "?id=" + encodeURIComponent(i.id);
        act.appendChild(b);
        tr.appendChild(act);
      }
      table.appendChild(tr);
    });
  }

  var LABELS = { registered: "registered", updated: "updated", deregistered: "deregistered", expired: "expired", removed: "removed" };

  function drawFeed() {
    var items = cfg.service ? feed.filter(function (f) { return f.inst.service === cfg.service; }) : feed;
    feedEl.textContent = "";
    if (!items.length) {
      feedEl.appendChild(L.el("li", "muted feed-empty", "Nothing yet: changes appear here as instances come and go."));
      return;
    }
    items.forEach(function (f) {
      var li = L.el("li", "feed-item kind-" + f.kind);
      li.appendChild(L.el("span", "muted feed-time", L.clock(f.at)));
      li.appendChild(L.el("span", "badge kind-" + f.kind, LABELS[f.kind] || f.kind));
      if (!cfg.service) {
        var s = L.el("a", "feed-service", f.inst.service);
        s.href = serviceUrl(f.inst.service);
        li.appendChild(s);
      }
      li.appendChild(L.el("code", "feed-instance", f.inst.id));
      if (f.inst.endpoint && f.inst.address) { li.appendChild(L.el("span", "muted", f.inst.endpoint)); }
      if (f.by) { li.appendChild(L.el("span", "feed-by", "by " + f.by)); }
      if (f.when) { li.appendChild(L.el("span", "muted", f.when)); }
      if (f.revision) { li.appendChild(L.el("span", "muted", "rev " + f.revision)); }
      feedEl.appendChild(li);
    });
  }

  function tick() {
    if (!cfg.service) { return; }
    var now = Date.now();
    var rows = table.querySelectorAll("tr[data-key]");
    for (var r = 0; r < rows.length; r++) {
      var i = instances[rows[r].dataset.key];
      if (!i) { continue; }
      var ttlCell = rows[r].querySelector(".ttl");
      if (i.ttl === null || i.ttl === undefined) {
        ttlCell.textContent = i.lease ? "…" : "no lease";
      } else if (i.ttl < 0 || i.deadline === null) {
        ttlCell.textContent = "expired";
        ttlCell.className = "ttl expired";
      } else {
        var left = Math.max(0, Math.ceil((i.deadline - now) / 1000));
        ttlCell.textContent = left + " s left" + (i.granted_ttl ? " of " + i.granted_ttl : "");
        ttlCell.className = "ttl" + (left <= 3 ? " low" : "");
      }
      var ageCell = rows[r].querySelector(".age");
      var born = Date.parse(i.registered_at);
      ageCell.textContent = isNaN(born) ? "–" : L.duration((now - born) / 1000);
      ageCell.title = i.registered_at || "";
    }
  }

  L.open(cfg.ws, { message: onMessage });
  window.setInterval(tick, 250);
})();
