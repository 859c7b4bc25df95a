/* The live dashboard: one EventSource on the staff feed, a snapshot a second. */
(function () {
  "use strict";
  var root = document.querySelector("[data-feed-url]");
  var status = document.getElementById("feed-status");

  function text(id, value) { document.getElementById(id).textContent = value; }
  function ms(seconds) { return seconds == null ? "–" : Math.round(seconds * 1000) + " ms"; }
  function pct(rate) { return (rate * 100).toFixed(1) + "%"; }

  function rows(tableId, items, cells) {
    var body = document.querySelector("#" + tableId + " tbody");
    body.textContent = "";
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      cells(item).forEach(function (cell) {
        var td = document.createElement("td");
        if (cell && cell.className) { td.className = cell.className; td.textContent = cell.text; }
        else td.textContent = cell;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    if (!items.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 9; td.textContent = "none"; tr.appendChild(td); body.appendChild(tr);
    }
  }

  function render(snap) {
    text("active", snap.active);
    text("tps", Math.round(snap.tokens_per_second));
    text("ttft-p50", ms(snap.ttft_p50));
    text("ttft-p95", ms(snap.ttft_p95));
    text("instances", snap.instances.length);
    text("audit-queue", snap.audit_queue_depth);
    text("window", "(last " + Math.round(snap.window_seconds / 60) + " minutes, " + snap.ttft_samples + " first tokens)");
    SluiceChart.line(document.getElementById("chart-tps"), snap.history.map(function (p) { return [p[0], p[2]]; }));
    SluiceChart.line(document.getElementById("chart-active"), snap.history.map(function (p) { return [p[0], p[1]]; }));
    rows("providers", snap.providers, function (p) {
      return [p.provider, p.attempts, pct(p.error_rate), pct(p.fallback_rate),
        { className: "breaker-" + p.breaker, text: p.breaker.replace("_", "-") }];
    });
    rows("streams", snap.streams, function (s) {
      return [s.id.slice(-10), s.app, s.model, s.provider || "–", s.transport,
        s.age.toFixed(1) + " s", s.tokens, s.readers, s.instance];
    });
    status.className = "sluice-status";
    status.textContent = "Live · updated " + new Date(snap.at * 1000).toLocaleTimeString() +
      " · " + snap.instances.join(", ");
  }

  var source = new EventSource(root.dataset.feedUrl);
  source.onmessage = function (event) { render(JSON.parse(event.data)); };
  source.onerror = function () {
    status.className = "sluice-status error";
    status.textContent = "Disconnected from the feed; reconnecting…";
  };
})();
