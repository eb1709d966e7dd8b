// herald-lag.js: reports how long after their publish a page showed Herald's events.
//
//   <script src="/herald-lag.js"></script>
//   const lag = HeraldLag.start({ sample: 0.1 });
//   source.onmessage = (e) => { show(e.data); lag.rendered(e.lastEventId); };
//
// For a sample of events, it notes when the page painted them (the frame after rendered() is
// called) by the page's monotonic clock, and every few seconds posts the ids with how long ago
// that was to the gateway, which knows each event's publish time: no browser clock is trusted.
// Options: endpoint ("/v1/telemetry/lag"), sample (0.1), flushMs (5000), maxBatch (50).
(function (global) {
  "use strict";
  function start(options) {
    const opts = Object.assign(
      { endpoint: "/v1/telemetry/lag", sample: 0.1, flushMs: 5000, maxBatch: 50 },
      options || {});
    let pending = [];

    function note(id) {
      pending.push({ id: id, at: performance.now() });
      if (pending.length > 10 * opts.maxBatch) pending.shift();
      if (pending.length >= opts.maxBatch) flush();
    }

    function rendered(id) {
      if (!id || Math.random() >= opts.sample) return;
      // The next frame is when the browser paints what the handler changed.
      if (document.visibilityState === "visible" && global.requestAnimationFrame) {
        global.requestAnimationFrame(function () { note(id); });
      } else {
        note(id);
      }
    }

    function flush() {
      if (!pending.length) return;
      const now = performance.now();
      const samples = pending.splice(0, opts.maxBatch).map(function (p) {
        return { id: p.id, ago_ms: Math.max(0, Math.round(now - p.at)) };
      });
      fetch(opts.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ samples: samples }),
        keepalive: true,
      }).catch(function () {});
    }

    const timer = setInterval(flush, opts.flushMs);
    global.addEventListener("pagehide", flush);
    return {
      rendered: rendered,
      flush: flush,
      stop: function () { clearInterval(timer); flush(); },
    };
  }
  global.HeraldLag = { start: start };
})(window);
