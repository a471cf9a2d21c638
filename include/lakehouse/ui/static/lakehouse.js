// The Lakehouse page: draws the charts from the figures the server embedded, then re-fetches the
// JSON endpoint every data-refresh-ms and updates the figures, tables and charts in place.
// Plain browser JavaScript, no build step; Chart.js (pinned, vendored) draws the charts.
"use strict";

(function () {
  const body = document.body;
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const charts = {};
  const MIN_WINDOW_S = 15 * 60;  // the charts show at least this much, however young the stack

  function fmtRecords(v) { return v === null || v === undefined ? "" : String(Math.round(v)); }
  function fmtSeconds(v) { return v === null || v === undefined ? "" : v.toFixed(1); }
  function raw(v) { return v === null || v === undefined ? "" : String(v); }
  function fmtBytes(v) {
    if (v === null || v === undefined) return "";
    let size = v;
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (size < 1024 || unit === "GiB") return unit === "B" ? size.toFixed(0) + " B" : size.toFixed(1) + " " + unit;
      size /= 1024;
    }
    return "";
  }
  function cell(text, value) {
    const td = document.createElement("td");
    td.textContent = text;
    if (value !== undefined) td.dataset.value = raw(value);
    return td;
  }
  function setFigure(el, value, format) {
    el.dataset.value = raw(value);
    el.textContent = format(value);
  }
  function timeLabels(bins) {
    return bins.map(function (t) {
      return new Date(t * 1000).toISOString().substring(11, 16);
    });
  }

  function drawChart(id, labels, series, percent, emptyText) {
    const canvas = document.getElementById(id);
    if (!canvas || typeof Chart === "undefined") return;
    const datasets = Object.keys(series).map(function (name, i) {
      return { label: name, data: series[name], borderColor: COLORS[i % COLORS.length],
               backgroundColor: COLORS[i % COLORS.length], pointRadius: 0, borderWidth: 1.5, spanGaps: false };
    });
    const points = datasets.reduce(function (n, d) {
      return n + d.data.filter(function (v) { return v !== null && v !== undefined; }).length;
    }, 0);
    const title = { display: datasets.length === 0, text: emptyText };
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets = datasets;
      charts[id].options.plugins.title = title;
      charts[id].update("none");
    } else {
      charts[id] = new Chart(canvas, {
        type: "line", data: { labels: labels, datasets: datasets },
        options: { animation: false, responsive: true, maintainAspectRatio: false, normalized: true,
                   interaction: { mode: "index", intersect: false }, plugins: { title: title },
                   scales: { y: { beginAtZero: true, ticks: percent ? { callback: function (v) { return (v * 100).toFixed(1) + "%"; } } : {} },
                             x: { ticks: { maxTicksLimit: 12 } } } }
      });
    }
    canvas.dataset.points = String(points);
  }

  // The first bin any exchange's series has data in (records > 0, or any dead-letter rate).
  function firstData(bySeries, length, hasData) {
    let first = length;
    for (const series of Object.values(bySeries)) {
      for (const values of Object.values(series)) {
        const i = values.findIndex(hasData);
        if (i >= 0 && i < first) first = i;
      }
    }
    return first;
  }

  // A stack younger than the charts' window: they start a little before its first data (at least
  // MIN_WINDOW_S shown) instead of hours of empty bins. Both charts of an exchange share the start.
  function chartStart(h) {
    const first = firstData(h.records_per_minute, h.records_bins.length, function (v) { return v > 0; });
    const keep = Math.ceil(MIN_WINDOW_S / h.records_bin_seconds);
    const i = Math.max(0, Math.min(first - 2, h.records_bins.length - keep));
    return h.records_bins.length ? h.records_bins[i] : 0;
  }

  function since(bins, start, binSeconds) {
    const i = bins.findIndex(function (t) { return t + binSeconds > start; });
    return i < 0 ? 0 : i;
  }

  function drawCharts(f) {
    const h = f.history;
    const start = chartStart(h);
    const r = since(h.records_bins, start, h.records_bin_seconds);
    const d = since(h.dlq_bins, start, h.dlq_bin_seconds);
    const cut = function (series, i) {
      return Object.fromEntries(Object.entries(series || {}).map(function (kv) { return [kv[0], kv[1].slice(i)]; }));
    };
    const recordLabels = timeLabels(h.records_bins.slice(r));
    const dlqLabels = timeLabels(h.dlq_bins.slice(d));
    for (const exchange of Object.keys(f.exchanges)) {
      drawChart("records-chart-" + exchange, recordLabels, cut(h.records_per_minute[exchange], r), false,
                "No records in this window");
      drawChart("dlq-chart-" + exchange, dlqLabels, cut(h.dlq_rate[exchange], d), true,
                "No dead letters in this window");
    }
  }

  function replaceRows(tableId, rows) {
    const tbody = document.querySelector("#" + tableId + " tbody");
    tbody.replaceChildren.apply(tbody, rows);
  }

  function render(f) {
    body.dataset.generatedAt = f.generated_at;
    const at = document.getElementById("generated-at");
    at.textContent = f.generated_at;
    at.setAttribute("datetime", f.generated_at);
    const status = document.getElementById("status");
    status.textContent = f.status;
    status.dataset.status = f.status;
    const errors = document.getElementById("errors");
    errors.replaceChildren.apply(errors, f.errors.map(function (e) {
      const li = document.createElement("li");
      li.textContent = "not measured: " + e;
      return li;
    }));
    for (const exchange of Object.keys(f.exchanges)) {
      const section = document.querySelector('section.exchange[data-exchange="' + exchange + '"]');
      if (!section) continue;
      const ex = f.exchanges[exchange];
      for (const layer of Object.keys(ex.lag)) {
        const records = section.querySelector('[data-figure="lag_records"][data-layer="' + layer + '"]');
        const seconds = section.querySelector('[data-figure="lag_seconds"][data-layer="' + layer + '"]');
        if (records) setFigure(records, ex.lag[layer].records, fmtRecords);
        if (seconds) setFigure(seconds, ex.lag[layer].seconds, fmtSeconds);
      }
      const e2e = section.querySelector('[data-figure="end_to_end_seconds"]');
      if (e2e) setFigure(e2e, ex.end_to_end_seconds, fmtSeconds);
    }
    const alerts = document.getElementById("alerts");
    const items = f.firing.map(function (a) {
      const li = document.createElement("li");
      li.dataset.alert = a.key;
      li.dataset.severity = a.severity;
      const strong = document.createElement("strong");
      strong.textContent = a.severity;
      li.append(strong, " " + a.rule + ": " + a.summary);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "none firing";
      items.push(li);
    }
    alerts.replaceChildren.apply(alerts, items);
    replaceRows("freshness", f.tables.map(function (t) {
      const tr = document.createElement("tr");
      tr.dataset.table = t.table;
      tr.append(cell(t.table), cell(fmtSeconds(t.commit_age_seconds), t.commit_age_seconds),
                cell(fmtSeconds(t.event_age_seconds), t.event_age_seconds));
      return tr;
    }));
    replaceRows("tables", f.tables.map(function (t) {
      const tr = document.createElement("tr");
      tr.dataset.table = t.table;
      tr.append(cell(t.table), cell(fmtBytes(t.bytes), t.bytes), cell(fmtRecords(t.data_files), t.data_files),
                cell(fmtRecords(t.snapshots), t.snapshots));
      return tr;
    }));
    replaceRows("maintenance", (f.maintenance || []).map(function (run) {
      const tr = document.createElement("tr");
      tr.dataset.dagId = run.dag_id;
      const name = document.createElement("td");
      const link = document.createElement("a");
      link.href = body.dataset.airflow + "/dags/" + encodeURIComponent(run.dag_id);
      link.target = "_top";
      link.textContent = run.dag_id;
      name.append(link);
      const state = cell(run.state || "never ran");
      state.dataset.state = run.state || "";
      tr.append(name, state, cell(run.start || ""), cell(run.end || ""));
      return tr;
    }));
    drawCharts(f);
  }

  // A failed refresh keeps the figures shown and says so next to their time (e.g. 401 once the login expired).
  function refreshFailed(why) {
    body.dataset.refreshError = why;
    const note = document.getElementById("refresh-error");
    if (note) {
      note.textContent = why ? " - the last refresh failed (" + why + "): these figures are older" : "";
      note.hidden = !why;
    }
  }

  async function refresh() {
    try {
      const response = await fetch(body.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        render(await response.json());
        refreshFailed("");
      } else {
        refreshFailed("HTTP " + response.status);
      }
    } catch (err) {
      refreshFailed(String(err));
    }
  }

  const initial = JSON.parse(document.getElementById("lakehouse-data").textContent);
  drawCharts(initial);
  setInterval(refresh, Number(body.dataset.refreshMs) || 15000);
})();
