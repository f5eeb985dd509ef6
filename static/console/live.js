// Shared by the live pages: a websocket that reconnects, and small formatting helpers.
// ConsoleLive.open(path, {open, message, closed}) connects to ws(s)://<this host><path>, calls
// open() on every (re)connection, message(obj) for each JSON message, closed(code) when it
// drops; it reconnects with a growing delay (0.5 s doubling to 8 s) unless the server closed
// it for good (4401: signed out, 4400: bad request). #live-status shows the connection state.
(function () {
  "use strict";

  function open(path, handlers) {
    var statusEl = document.getElementById("live-status");
    var ws = null;
    var delay = 500;
    var stopped = false;

    function status(state, text) {
      if (!statusEl) { return; }
      statusEl.className = "live-status " + state;
      statusEl.textContent = text;
    }

    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      status("connecting", "connecting…");
      ws = new WebSocket(scheme + window.location.host + path);
      ws.onopen = function () {
        delay = 500;
        status("live", "live");
        if (handlers.open) { handlers.open(); }
      };
      ws.onmessage = function (e) {
        var msg;
        try { msg = JSON.parse(e.data); } catch (err) { return; }
        handlers.message(msg);
      };
      ws.onclose = function (e) {
        ws = null;
        if (stopped) { return; }
        if (handlers.closed) { handlers.closed(e.code); }
        if (e.code === 4401) {
          stopped = true;
          status("down", "signed out: reload the page to log in again");
          return;
        }
        if (e.code === 4400) {
          stopped = true;
          status("down", "the server refused this page's request");
          return;
        }
        var wait = delay;
        delay = Math.min(delay * 2, 8000);
        status("reconnecting", "disconnected: reconnecting in " + Math.max(1, Math.round(wait / 1000)) + " s");
        window.setTimeout(connect, wait);
      };
    }

    connect();
    return {
      send: function (obj) {
        if (ws && ws.readyState === WebSocket.OPEN) {
          ws.send(JSON.stringify(obj));
          return true;
        }
        return false;
      },
      isOpen: function () { return !!ws && ws.readyState === WebSocket.OPEN; },
      close: function () { stopped = true; if (ws) { ws.close(); } }
    };
  }

  function bytes(n) {
    if (n === null || n === undefined) { return "–"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var d = Math.floor(seconds / 86400);
    var h = Math.floor((seconds % 86400) / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + m + "m"; }
    if (m) { return m + "m " + s + "s"; }
    return s + "s";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }

  window.ConsoleLive = { open: open, bytes: bytes, duration: duration, el: el, clock: clock };
})();
