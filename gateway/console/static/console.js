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

  // Live series over Server-Sent Events: <div class="chart live" data-events="/url" data-series="loss">
  function live(el) {
    if (el.dataset.live || !window.EventSource) return;
    el.dataset.live = "1";
    var xs = [], ys = [], chart = null;
    var source = new EventSource(el.dataset.events);
    source.onmessage = function (msg) {
      var point;
      try { point = JSON.parse(msg.data); } catch (e) { return; }
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
    source.addEventListener("end", function () { source.close(); });
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
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    scan(evt.detail.target);
    var first = evt.detail.target.querySelector && evt.detail.target.querySelector("[role=status],[role=alert]");
    if (first) { first.setAttribute("tabindex", "-1"); first.focus(); }
  });
})();
