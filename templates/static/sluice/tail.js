/* The live tail: one EventSource on the stream's events, text appended as it comes. */
(function () {
  "use strict";
  var root = document.querySelector("[data-events-url]");
  var status = document.getElementById("tail-status");
  var text = document.getElementById("tail-text");
  var tools = document.getElementById("tail-tools");
  var calls = {};
  var source = new EventSource(root.dataset.eventsUrl);

  function seen(event) { document.getElementById("tail-seq").textContent = event.lastEventId; }
  function on(name, handle) {
    source.addEventListener(name, function (event) { seen(event); handle(JSON.parse(event.data)); });
  }
  function showCalls() {
    document.getElementById("tail-tools-box").hidden = false;
    tools.textContent = Object.keys(calls).map(function (i) {
      return calls[i].name + "(" + calls[i].arguments + ")";
    }).join("\n");
  }

  source.onopen = function () { status.textContent = "Live"; };
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) status.textContent = "Closed";
    else status.textContent = "Reconnecting…";
  };
  on("reset", function () {  // a redacted stream starts over on each connection
    text.textContent = "";
    tools.textContent = "";
    calls = {};
    document.getElementById("tail-end").textContent = "";
  });
  on("start", function (data) {
    document.getElementById("tail-model").textContent = data.model;
    if (data.continued) text.textContent += "\n[continued on " + data.model + "]\n";
  });
  on("text", function (piece) { text.textContent += piece; });
  on("refusal", function (piece) { text.textContent += piece; });
  on("reasoning", function () {});
  on("skip", function () {});
  on("tool_call", function (part) {
    var call = calls[part.index] || (calls[part.index] = { name: "", arguments: "" });
    call.name += part.name || "";
    call.arguments += part.arguments || "";
    showCalls();
  });
  on("finish", function (reason) {
    document.getElementById("tail-end").textContent = "Finish reason: " + reason;
  });
  on("failure", function (failure) {
    document.getElementById("tail-end").textContent = "Error " + failure.status + ": " + failure.message;
  });
  on("gone", function () { status.textContent = "The stream can no longer be read"; source.close(); });
  on("end", function (data) {
    status.textContent = "Ended: " + data.outcome;
    source.close();
  });
})();
