/* A small hand-drawn SVG line chart: no library, no build step.
 * SluiceChart.line(svg, points, {format}) where points is [[t, value], ...]. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var nice = [1, 2, 5, 10].map(function (m) { return m * step; });
    for (var i = 0; i < nice.length; i++) if (value <= nice[i]) return nice[i];
    return nice[nice.length - 1];
  }

  function line(svg, points, options) {
    options = options || {};
    var format = options.format || function (v) { return v % 1 ? v.toFixed(1) : String(v); };
    var box = svg.viewBox.baseVal, W = box.width, H = box.height;
    var left = 44, right = 8, top = 8, bottom = 18;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = niceMax(points.reduce(function (m, p) { return Math.max(m, p[1]); }, 0));
    var t1 = points.length ? points[points.length - 1][0] : 0;
    var span = options.span || 120, t0 = t1 - span;
    var x = function (t) { return left + ((t - t0) / span) * (W - left - right); };
    var y = function (v) { return top + (1 - v / max) * (H - top - bottom); };
    [0, 0.5, 1].forEach(function (f) {
      var v = max * f;
      svg.appendChild(el("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), "class": "axis" }));
      svg.appendChild(el("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end", "class": "grid-label" }, format(v)));
    });
    svg.appendChild(el("text", { x: left, y: H - 4, "class": "grid-label" }, "-" + span + "s"));
    svg.appendChild(el("text", { x: W - right, y: H - 4, "text-anchor": "end", "class": "grid-label" }, "now"));
    var shown = points.filter(function (p) { return p[0] >= t0; });
    if (shown.length < 2) return;
    var d = shown.map(function (p, i) { return (i ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join("");
    var base = y(0).toFixed(1);
    svg.appendChild(el("path", { d: d + "L" + x(shown[shown.length - 1][0]).toFixed(1) + "," + base + "L" + x(shown[0][0]).toFixed(1) + "," + base + "Z", "class": "area" }));
    svg.appendChild(el("path", { d: d, "class": "line" }));
  }

  window.SluiceChart = { line: line };
})();
