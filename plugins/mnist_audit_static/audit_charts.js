// The MNIST audit page's charts, drawn with Chart.js (vendor/chart.umd.js, which `make install`
// fetches from the npm registry at a pinned version; see devtools/ui_assets.py). The page embeds
// what to draw as JSON (mnist_pipeline.audit_view.chart_data); without Chart.js the page keeps
// its tables and says how to get the charts.
(function () {
  "use strict";
  const source = document.getElementById("audit-data");
  if (!source) return;
  const data = JSON.parse(source.textContent);
  if (typeof Chart === "undefined") {
    const note = document.getElementById("charts-missing");
    if (note) note.hidden = false;
    return;
  }

  function options(runs, yTitle) {
    return {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      // offset: a lone run sits in the middle, not on the axis.
      scales: { x: { offset: true }, y: { title: { display: true, text: yTitle } } },
      plugins: {
        legend: { position: "bottom" },
        tooltip: { callbacks: { title: (items) => runs[items[0].dataIndex] } },
      },
    };
  }

  function draw(canvas, config, points) {
    const chart = new Chart(canvas, config);
    canvas.dataset.points = String(points);
    return chart;
  }

  const accuracyCanvas = document.getElementById("accuracy-chart");
  if (accuracyCanvas) {
    const accuracy = data.accuracy;
    draw(
      accuracyCanvas,
      {
        type: "line",
        data: {
          labels: accuracy.labels,
          datasets: [
            {
              label: "candidate",
              data: accuracy.candidate,
              borderColor: "#2b6cb0",
              backgroundColor: "#2b6cb0",
              pointRadius: 4,
            },
            {
              label: "champion",
              data: accuracy.champion,
              borderColor: "#718096",
              backgroundColor: "#718096",
              borderDash: [2, 3],
              pointStyle: "rectRot",
              pointRadius: 5,
              spanGaps: true,
            },
            {
              label: "gate: min_accuracy",
              data: accuracy.min_accuracy,
              borderColor: "#c53030",
              backgroundColor: "#c53030",
              borderDash: [6, 4],
              // A dash at each run, so that the threshold shows with a single run too.
              pointStyle: "line",
              pointRadius: 14,
              pointBorderWidth: 3,
              stepped: "middle",
              spanGaps: true,
            },
          ],
        },
        options: options(accuracy.runs, "holdout accuracy"),
      },
      accuracy.runs.length,
    );
  }

  const driftCanvas = document.getElementById("drift-chart");
  if (driftCanvas) {
    const drift = data.drift;
    draw(
      driftCanvas,
      {
        type: "bar",
        data: {
          labels: drift.labels,
          datasets: [
            {
              label: "drift score (red: drift)",
              data: drift.score,
              backgroundColor: drift.drift.map((drifted) => (drifted ? "#c53030" : "#48bb78")),
            },
          ],
        },
        options: options(drift.runs, "drift score"),
      },
      drift.runs.length,
    );
  }
})();
