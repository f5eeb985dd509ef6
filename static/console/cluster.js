// The cluster dashboard (/cluster/), live over /ws/cluster/ (console/consumers.py
// ClusterConsumer): one sample about every second redraws the members table and the summary,
// and feeds two uPlot charts (static/vendor/uplot-1.6.32): the leader's raft index with each
// member's applied index, and writes per second. Leader changes are marked on both charts.
(function () {
  "use strict";
  var L = window.ConsoleLive;
  var cfgEl = document.getElementById("cluster-config");
  if (!L || !cfgEl) { return; }
  var cfg = JSON.parse(cfgEl.textContent);
  var POINTS = 300;  // about five minutes at one sample a second
  var COLORS = ["#0969da", "#1a7f37", "#bc4c00", "#8250df", "#bf3989", "#9a6700", "#57606a"];
  function $(id) { return document.getElementById(id); }

  var times = [];
  var raftIndex = [];
  var applied = {};     // member id -> values aligned with times
  var names = {};       // member id -> name
  var writes = [];
  var marks = [];       // {t, label}
  var changes = [];
  var indexChart = null;
  var writesChart = null;
  var seriesIds = "";

  function reason(text) {  // gRPC's connection errors are long: their gist
    var m = /(connection refused|deadline exceeded|no answer within [^,]*|no leader|not started yet)/i.exec(text);
    if (m) { return m[1].toLowerCase(); }
    return text.length > 60 ? text.slice(0, 60) + "…" : text;
  }

  function cellWith(parent, tag, cls, text) {
    var node = L.el(tag, cls, text);
    parent.appendChild(node);
    return node;
  }

  function actionLink(parent, url, id, label, cls) {
    var a = L.el("a", "button small " + (cls || "secondary"), label);
    a.href = url.replace("__id__", id);
    parent.appendChild(a);
    parent.appendChild(document.createTextNode(" "));
  }

  function drawMembers(sample) {
    var tbody = document.querySelector("#members tbody");
    tbody.textContent = "";
    sample.members.forEach(function (m) {
      var tr = L.el("tr", m.is_leader ? "leader" : "");
      tr.dataset.member = m.id;
      var name = cellWith(tr, "td");
      cellWith(name, "strong", "member-name", m.name || "(unstarted)");
      if (m.is_leader) { name.appendChild(document.createTextNode(" ")); cellWith(name, "span", "badge leader", "leader"); }
      if (m.is_learner) { name.appendChild(document.createTextNode(" ")); cellWith(name, "span", "badge learner", "learner"); }
      cellWith(cellWith(tr, "td"), "code", null, m.id);
      var cu = cellWith(tr, "td");
      m.client_urls.forEach(function (u) { cellWith(cu, "code", null, u); cu.appendChild(document.createTextNode(" ")); });
      var pu = cellWith(tr, "td");
      m.peer_urls.forEach(function (u) { cellWith(pu, "code", null, u); pu.appendChild(document.createTextNode(" ")); });
      var health = cellWith(tr, "td");
      if (m.healthy) {
        cellWith(health, "span", "health ok", "healthy");
      } else {
        cellWith(health, "span", "health bad", "unhealthy");
        health.appendChild(document.createTextNode(" "));
        var full = [m.error].concat(m.errors || []).filter(Boolean).join(", ");
        cellWith(health, "span", "muted reason", reason(full)).title = full;
      }
      var has = m.raft_index !== undefined;
      cellWith(tr, "td", "num", has ? m.raft_term : "–");
      cellWith(tr, "td", "num", has ? m.raft_index : "–");
      cellWith(tr, "td", "num", has ? m.applied_index : "–");
      cellWith(tr, "td", "num" + (m.commit_lag ? " lagging" : ""), has && m.commit_lag !== null ? m.commit_lag : "–");
      cellWith(tr, "td", "num", has ? L.bytes(m.db_size) + " (" + L.bytes(m.db_size_in_use) + ")" : "–");
      cellWith(tr, "td", null, has ? m.version : "–");
      var alarms = cellWith(tr, "td");
      if (m.alarms.length) {
        m.alarms.forEach(function (a) { cellWith(alarms, "span", "badge alarm", a); });
      } else {
        cellWith(alarms, "span", "muted", "none");
      }
      if (cfg.can_edit) {
        var acts = cellWith(tr, "td", "member-actions");
        if (m.started) { actionLink(acts, cfg.urls.defragment, m.id, "Defragment"); }
        if (cfg.is_superuser) {
          if (m.is_learner) { actionLink(acts, cfg.urls.promote, m.id, "Promote"); }
          actionLink(acts, cfg.urls.remove, m.id, "Remove", "danger");
        }
      }
      tbody.appendChild(tr);
    });
  }

  function drawSummary(sample) {
    $("c-cluster").textContent = sample.cluster_id || "–";
    $("c-leader").textContent = sample.leader ? (sample.leader_name || "(unnamed)") : "none";
    $("c-leader").className = sample.leader ? "" : "error";
    $("c-leader-id").textContent = sample.leader;
    $("c-term").textContent = sample.raft_term === null ? "–" : sample.raft_term;
    $("c-revision").textContent = sample.revision || "–";
    $("c-wps").textContent = sample.writes_per_s === null ? "–" : sample.writes_per_s;
    var alarms = $("c-alarms");
    alarms.textContent = "";
    if (!sample.alarms.length) { alarms.textContent = "none"; }
    sample.alarms.forEach(function (a) { cellWith(alarms, "span", "badge alarm", a.alarm + " on " + a.member); });
    var banner = $("c-banner");
    var text = sample.error ? "The cluster did not answer: " + sample.error : (sample.warning || "");
    banner.textContent = text;
    banner.hidden = !text;
  }

  function noteLeaderChange(sample) {
    if (!sample.leader_changed) { return; }
    var label = "leader → " + (sample.leader_name || sample.leader);
    marks.push({ t: sample.time, label: label });
    changes.unshift({ t: sample.time, from: names[sample.previous_leader] || sample.previous_leader, to: sample.leader_name || sample.leader, term: sample.raft_term });
    var ul = $("c-leader-changes");
    ul.textContent = "";
    changes.forEach(function (c) {
      var li = L.el("li", "feed-item leader-change");
      li.appendChild(L.el("span", "muted feed-time", L.clock(c.t)));
      li.appendChild(L.el("span", null, (c.from || "none") + " → "));
      li.appendChild(L.el("strong", "new-leader", c.to));
      if (c.term) { li.appendChild(L.el("span", "muted", "term " + c.term)); }
      ul.appendChild(li);
    });
  }

  function drawMarks(u) {
    var ctx = u.ctx;
    var top = u.bbox.top;
    var height = u.bbox.height;
    ctx.save();
    ctx.strokeStyle = "#cf222e";
    ctx.fillStyle = "#cf222e";
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5 * (window.devicePixelRatio || 1);
    ctx.font = (11 * (window.devicePixelRatio || 1)) + "px system-ui, sans-serif";
    marks.forEach(function (m) {
      if (!times.length || m.t < times[0]) { return; }
      var x = Math.round(u.valToPos(m.t, "x", true));
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(m.label, x + 4, top + 12 * (window.devicePixelRatio || 1));
    });
    ctx.restore();
  }

  function width(el) { return Math.max(280, el.clientWidth); }

  function makeChart(el, series, data) {
    el.textContent = "";
    return new window.uPlot({
      width: width(el),
      height: 220,
      scales: { x: { time: true } },
      series: [{}].concat(series),
      axes: [{}, { size: 70, values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? v : ""; }); } }],
      legend: { live: false },
      hooks: { draw: [drawMarks] }
    }, data, el);
  }

  function memberIds() { return Object.keys(applied).sort(); }

  function indexData() {
    return [times, raftIndex].concat(memberIds().map(function (id) { return applied[id]; }));
  }

  function rebuildIndexChart() {
    var series = [{ label: "raft index (leader)", stroke: "#24292f", width: 2 }];
    memberIds().forEach(function (id, n) {
      series.push({ label: "applied " + (names[id] || id), stroke: COLORS[n % COLORS.length], width: 1.5, dash: [4, 3] });
    });
    indexChart = makeChart($("chart-index"), series, indexData());
  }

  function record(sample) {
    if (sample.error) { return; }
    times.push(sample.time);
    var leader = sample.members.filter(function (m) { return m.is_leader; })[0];
    raftIndex.push(leader && leader.raft_index !== undefined ? leader.raft_index : null);
    writes.push(sample.writes_per_s);
    var seen = {};
    sample.members.forEach(function (m) {
      names[m.id] = m.name || m.id;
      seen[m.id] = true;
      if (!applied[m.id]) { applied[m.id] = times.slice(0, -1).map(function () { return null; }); }
      applied[m.id].push(m.applied_index !== undefined ? m.applied_index : null);
    });
    Object.keys(applied).forEach(function (id) {
      if (!seen[id]) { applied[id].push(null); }
      if (applied[id].every(function (v) { return v === null; })) { delete applied[id]; }
    });
    if (times.length > POINTS) {
      var cut = times.length - POINTS;
      times.splice(0, cut);
      raftIndex.splice(0, cut);
      writes.splice(0, cut);
      Object.keys(applied).forEach(function (id) { applied[id].splice(0, cut); });
      marks = marks.filter(function (m) { return m.t >= times[0]; });
    }
    if (!window.uPlot) { return; }
    var ids = memberIds().join(",");
    if (!indexChart || ids !== seriesIds) {
      seriesIds = ids;
      if (indexChart) { indexChart.destroy(); }
      rebuildIndexChart();
    } else {
      indexChart.setData(indexData());
    }
    if (!writesChart) {
      writesChart = makeChart($("chart-writes"), [{ label: "writes/s", stroke: "#0969da", fill: "rgba(9,105,218,0.1)", width: 2 }], [times, writes]);
    } else {
      writesChart.setData([times, writes]);
    }
  }

  function onMessage(msg) {
    if (msg.type !== "sample") {
      if (msg.type === "error") { $("c-banner").textContent = msg.message; $("c-banner").hidden = false; }
      return;
    }
    drawSummary(msg);
    if (!msg.error) {
      noteLeaderChange(msg);
      drawMembers(msg);
    }
    record(msg);
  }

  window.addEventListener("resize", function () {
    [[indexChart, "chart-index"], [writesChart, "chart-writes"]].forEach(function (pair) {
      if (pair[0]) { pair[0].setSize({ width: width($(pair[1])), height: 220 }); }
    });
  });

  var initial = document.getElementById("cluster-initial");
  if (initial) {
    var first = JSON.parse(initial.textContent);
    first.members.forEach(function (m) { names[m.id] = m.name || m.id; });
    drawMembers(first);
  }
  L.open(cfg.ws, { message: onMessage });
})();
