// Palisade console: the only script of ours. Draws the uPlot charts from their data-chart attributes (JSON the
// server rendered) and focuses new results for keyboard and screen-reader users. No eval, no inline handlers.
(function () {
  "use strict";
  var COLORS = ["#0b5cad", "#a01919", "#b35c00", "#11623a"];

  function draw(el) {
    if (el.dataset.drawn || typeof uPlot === "undefined") return;
    var spec;
    try { spec = JSON.parse(el.dataset.chart); } catch (e) { return; }
    var data = [spec.x].concat(spec.series.map(function (s) { return s.values; }));
    var series = [{}].concat(spec.series.map(function (s, i) {
      return { label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true };
    }));
    el.dataset.drawn = "1";
    var width = Math.max(300, el.clientWidth || 480);
    var chart = new uPlot({ width: width, height: 220, series: series, axes: [{}, { size: 60 }] }, data, el);
    if (window.ResizeObserver) {
      new ResizeObserver(function () { chart.setSize({ width: Math.max(300, el.clientWidth), height: 220 }); }).observe(el);
    }
  }

  // Live series over Server-Sent Events (e.g. a run's GET /admin/runs/{id}/events):
  // <div class="chart" data-events="/url" data-series="loss"> plots point.step against point[series]
  function live(el) {
    if (el.dataset.live || !window.EventSource) return;
    el.dataset.live = "1";
    var xs = [], ys = [], chart = null;
    var source = new EventSource(el.dataset.events);
    source.onmessage = function (msg) {
      var point;
      try { point = JSON.parse(msg.data); } catch (e) { return; }
      if (point.type === "status") { source.close(); return; }  // the run ended: nothing more will come
      if (typeof point.step !== "number" || typeof point[el.dataset.series] !== "number") return;
      xs.push(point.step); ys.push(point[el.dataset.series]);
      if (!chart) {
        chart = new uPlot({ width: Math.max(300, el.clientWidth || 480), height: 220,
          scales: { x: { time: false } },
          series: [{}, { label: el.dataset.series, stroke: COLORS[0], width: 2 }] }, [xs, ys], el);
      } else {
        chart.setData([xs, ys]);
      }
    };
  }

  function scan(root) {
    (root.querySelectorAll ? root : document).querySelectorAll(".chart[data-chart]").forEach(draw);
    (root.querySelectorAll ? root : document).querySelectorAll(".chart[data-events]").forEach(live);
  }

  document.addEventListener("DOMContentLoaded", function () { scan(document); });
  // a create form empties itself once the server accepted it (the secret it returned stays on screen)
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (evt.detail.successful && form.tagName === "FORM" && form.hasAttribute("data-reset")) form.reset();
    // a form that posts to the JSON API (a dataset upload) goes to the console page of what it created
    if (form.tagName === "FORM" && form.dataset.go) {
      var body = {};
      try { body = JSON.parse(evt.detail.xhr.responseText); } catch (e) { body = {}; }
      if (evt.detail.successful && typeof body.id === "string" && /^[A-Za-z0-9_-]+$/.test(body.id)) {
        window.location.assign(form.dataset.go + body.id);
      } else {
        var out = form.parentNode.querySelector("[aria-live]");
        if (out) {
          var p = document.createElement("p");
          p.className = "error"; p.setAttribute("role", "alert");
          p.textContent = (body.error && body.error.message) || "The upload was refused.";
          out.replaceChildren(p);
        }
      }
    }
  });
  document.addEventListener("htmx:xhr:progress", function (evt) {
    var bar = evt.detail.elt.querySelector && evt.detail.elt.querySelector("progress.upload-progress");
    if (bar && evt.detail.lengthComputable) bar.value = Math.round(100 * evt.detail.loaded / evt.detail.total);
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    scan(evt.detail.target);
    var first = evt.detail.target.querySelector && evt.detail.target.querySelector("[role=status],[role=alert]");
    if (first) { first.setAttribute("tabindex", "-1"); first.focus(); }
  });
})();
