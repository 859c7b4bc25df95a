/* The playground: a prompt through the public streaming API, as an app's page
 * would send it. It holds a short-lived ticket from the staff-only ticket view,
 * never a token. Dropping the connection and resuming from the last seq shows
 * that no token is lost or repeated. */
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("playground-config").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var run = null;

  function log(message) {
    var li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + "  " + message;
    $("events").appendChild(li);
    $("events").scrollTop = $("events").scrollHeight;
  }
  function setState(state) { $("state").textContent = state; }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function csrf() { return document.querySelector("[name=csrfmiddlewaretoken]").value; }
  function transport() { return document.querySelector("input[name=transport]:checked").value; }

  async function chatTicket() {
    var response = await fetch(config.ticketUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": csrf() },
    });
    if (!response.ok) throw new Error("could not get a ticket (HTTP " + response.status + ")");
    return (await response.json()).ticket;
  }

  function messages() { return [{ role: "user", content: $("prompt").value }]; }

  async function createStream() {
    var ticket = await chatTicket();
    run.sentAt = performance.now();
    var response = await fetch("/v1/streams?ticket=" + encodeURIComponent(ticket), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("route").value, messages: messages() }),
    });
    var body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || "HTTP " + response.status);
    run.streamId = body.id;
    run.eventsUrl = body.events_url;  // carries the stream's ticket
    $("stream-id").textContent = body.id;
    log("POST /v1/streams → " + body.id);
  }

  // -- what every transport reports ------------------------------------------
  function onChunk(seq, chunk) {
    if (seq <= run.seq) return;  // never shown twice
    run.seq = seq;
    (chunk.choices || []).forEach(function (choice) {
      var content = choice.delta && choice.delta.content;
      if (!content) return;
      if (run.firstAt === null) {
        run.firstAt = performance.now();
        $("ttft").textContent = Math.round(run.firstAt - run.sentAt) + " ms";
      }
      run.tokens += 1;
      $("output").appendChild(document.createTextNode(content));
    });
    showProgress();
  }
  function onError(seq, error) {
    run.seq = Math.max(run.seq, seq || 0);
    var line = document.createElement("span");
    line.className = "marker";
    line.textContent = "[error: " + ((error && error.message) || "unknown") + "]";
    $("output").appendChild(line);
    log("error event: " + ((error && error.code) || "") + " " + ((error && error.message) || ""));
  }
  function onDone(seq) {
    run.seq = Math.max(run.seq, seq || 0);
    if (run.done) return;
    run.done = true;
    run.close();
    showProgress();
    setState("done");
    log("stream done at #" + run.seq);
    $("drop").disabled = true;
    $("stop").disabled = true;
    $("run").disabled = false;
  }
  function showProgress() {
    $("tokens").textContent = run.tokens;
    $("seq").textContent = run.seq ? "#" + run.seq : "–";
    if (run.firstAt !== null && run.tokens > 1) {
      var seconds = (performance.now() - run.firstAt) / 1000;
      if (seconds > 0) $("rate").textContent = Math.round((run.tokens - 1) / seconds);
    }
  }
  function fail(error) {
    log("failed: " + error.message);
    setState("failed");
    $("run").disabled = false;
    $("drop").disabled = true;
  }

  // -- transports: each connects from a cursor and returns a way to drop it --
  function connectSse(after) {
    var url = run.eventsUrl + (after ? "&last_event_id=" + after : "");
    var source = new EventSource(url);
    log("EventSource GET " + run.eventsUrl.split("?")[0] + (after ? " from #" + after : ""));
    source.onmessage = function (event) {
      var seq = parseInt(event.lastEventId, 10) || 0;
      var data = JSON.parse(event.data);
      if (data.error) onError(seq, data.error); else onChunk(seq, data);
    };
    // The end is a named event: onmessage only ever sees JSON.
    source.addEventListener("done", function (event) {
      onDone(parseInt(event.lastEventId, 10) || 0);
    });
    source.onerror = function () { if (run.done) source.close(); };
    return function () { source.close(); };
  }

  function connectNdjson(after) {
    var controller = new AbortController();
    var url = run.eventsUrl + (after ? "&after=" + after : "");
    log("fetch NDJSON " + run.eventsUrl.split("?")[0] + (after ? " from #" + after : ""));
    fetch(url, { headers: { Accept: "application/x-ndjson" }, signal: controller.signal })
      .then(async function (response) {
        if (response.status === 204) { onDone(run.seq); return; }
        if (!response.ok) throw new Error("HTTP " + response.status);
        var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
        for (;;) {
          var part = await reader.read();
          if (part.done) break;
          buffer += decoder.decode(part.value, { stream: true });
          var lines = buffer.split("\n");
          buffer = lines.pop();
          lines.filter(Boolean).forEach(function (line) {
            var item = JSON.parse(line);
            if (item.chunk) onChunk(item.seq, item.chunk);
            else if (item.error) onError(item.seq, item.error);
            else if (item.done) onDone(item.seq);
          });
        }
      })
      .catch(function (error) { if (error.name !== "AbortError") fail(error); });
    return function () { controller.abort(); };
  }

  async function connectWs(after) {
    var ticket = await chatTicket();
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    var socket = new WebSocket(scheme + "//" + location.host + "/v1/ws", ["sluice.ticket." + ticket]);
    socket.onopen = function () {
      if (after === null) {
        run.sentAt = performance.now();
        socket.send(JSON.stringify({ type: "chat.create", request_id: "playground", model: $("route").value, messages: messages() }));
        log("WebSocket chat.create");
      } else {
        socket.send(JSON.stringify({ type: "stream.resume", stream_id: run.streamId, after: after }));
        log("WebSocket stream.resume from #" + after);
      }
    };
    socket.onmessage = function (event) {
      var m = JSON.parse(event.data);
      if (m.type === "stream.created") {
        run.streamId = m.stream_id;
        $("stream-id").textContent = m.stream_id;
        log("stream.created " + m.stream_id);
      } else if (m.type === "chunk") onChunk(m.seq, m.chunk);
      else if (m.type === "stream.done") onDone(m.seq);
      else if (m.type === "error" && m.seq) onError(m.seq, m.error);
      else if (m.type === "error") fail(new Error(m.error.message));
    };
    socket.onclose = function (event) { if (!run.done) log("socket closed (" + event.code + ")"); };
    run.socket = socket;
    return function () { socket.close(); };
  }

  function connect(after) {
    var kind = run.transport;
    if (kind === "ws") return connectWs(after);
    return Promise.resolve(kind === "sse" ? connectSse(after) : connectNdjson(after));
  }

  // -- buttons ----------------------------------------------------------------
  $("run").addEventListener("click", async function () {
    if (run && !run.done) run.close();
    run = { transport: transport(), seq: 0, tokens: 0, firstAt: null, sentAt: performance.now(),
            done: false, resumes: 0, close: function () {} };
    $("output").textContent = "";
    $("events").textContent = "";
    ["ttft", "rate", "seq", "stream-id"].forEach(function (id) { $(id).textContent = "–"; });
    $("tokens").textContent = "0";
    $("run").disabled = true;
    setState("streaming (" + run.transport + ")");
    try {
      if (run.transport !== "ws") await createStream();
      run.close = await connect(run.transport === "ws" ? null : 0);
      $("drop").disabled = false;
      $("stop").disabled = false;
    } catch (error) { fail(error); }
  });

  $("drop").addEventListener("click", async function () {
    if (!run || run.done) return;
    run.close();
    var at = run.seq;
    $("drop").disabled = true;
    setState("disconnected at #" + at);
    log("dropped the connection after #" + at);
    await sleep(1000);
    if (run.done) return;
    run.resumes += 1;
    setState("resumed (" + run.transport + ")");
    log("resuming after #" + at);
    try {
      run.close = await connect(at);
      $("drop").disabled = false;
    } catch (error) { fail(error); }
  });

  $("stop").addEventListener("click", async function () {
    if (!run || run.done || !run.streamId) return;
    if (run.transport === "ws") {
      run.socket.send(JSON.stringify({ type: "stream.cancel", stream_id: run.streamId }));
    } else {
      await fetch(run.eventsUrl, { method: "DELETE" });
    }
    log("cancel requested");
  });
})();
