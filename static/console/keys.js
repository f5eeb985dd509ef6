// Key detail page: a live countdown of the key's lease TTL.
// Data comes from the json_script element #lease-data ({"ttl": seconds, "url": JSON endpoint});
// the count is re-synchronised with the server (time_to_live) every 15 s.
(function () {
  "use strict";
  var dataEl = document.getElementById("lease-data");
  var out = document.getElementById("lease-ttl");
  if (!dataEl || !out) { return; }
  var data = JSON.parse(dataEl.textContent);
  if (!data) { return; }
  var deadline = Date.now() + data.ttl * 1000;
  var expired = data.ttl < 0;

  function render() {
    if (expired) {
      out.textContent = "expired (the key is gone: reload)";
      out.classList.add("expired");
      return;
    }
    var left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    out.textContent = left + " s left";
    out.classList.toggle("low", left <= 5);
  }

  function sync() {
    fetch(data.url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) { return; }
        expired = j.ttl < 0;
        deadline = Date.now() + j.ttl * 1000;
        render();
      })
      .catch(function () { /* keep counting locally */ });
  }

  render();
  window.setInterval(function () {
    if (!expired && deadline <= Date.now()) { sync(); }
    render();
  }, 1000);
  window.setInterval(sync, 15000);
})();
