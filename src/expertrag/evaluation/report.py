"""Evaluation reports: a Markdown table, CSV files, PNG plots and one self-contained HTML page.

:func:`summarize` aggregates :class:`~expertrag.evaluation.runner.CaseResult` rows per
(pipeline, condition); :func:`write_report` writes into a folder:

- ``report.md``: the summary table;
- ``summary.csv`` and ``results.csv`` (one row per scored item);
- ``plot_<metric>.png``: one bar chart per metric, pipelines side by side per condition;
- ``noise_curve.png``: accuracy against the noise ratio, one line per pipeline;
- ``report.html``: the table and every plot (embedded), opens in any browser.

Both the Markdown and the HTML report say how to read each score (:data:`SCALES`): the
judges' numbers are not all probabilities, and answer relevance in particular is a cosine
whose right answers sit well below 1. Bars carry their values; the legend sits beside the
plot, never over a bar. Every file is written to a temporary name first, made readable
(0644) and renamed into place.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertrag.evaluation.metrics import mean

_FIXED = ("n", "accuracy", "refusal_rate", "follows_counterfactual", "errors",
          "seconds_per_item")

#: How to read each score, printed next to the figures. The thresholds are the judges' own
#: (``expertrag.evaluation.judges``); answer relevance's was fitted on HotpotQA.
SCALES: dict[str, str] = {
    "accuracy": "share of items answered right: the gold answer (or an alias) appears in "
                "the answer; under negative rejection a refusal is the right answer.",
    "refusal_rate": "share of items the pipeline answered \"I don't know\".",
    "follows_counterfactual": "share of counterfactual items where the answer repeats the "
                              "planted false answer (lower is better).",
    "exact_match": "1 when the answer, normalised, equals a gold answer, else 0 (SQuAD).",
    "f1": "token overlap F1 between the answer and the best gold answer, 0 to 1 (SQuAD).",
    "contains": "1 when the answer contains a gold answer, else 0.",
    "context_relevance": "mean probability, by the relevance expert, that a passage the "
                         "pipeline used is relevant to the question (0 to 1; 0.5 is the "
                         "pass mark).",
    "faithfulness": "mean probability, by the critic expert, that each sentence of the "
                    "answer is supported by the passages (0 to 1; 0.5 is the pass mark); a "
                    "refusal claims nothing and scores 1.",
    "answer_relevance": "cosine similarity of the question's and the answer's embeddings "
                        "(all-MiniLM-L6-v2), not a probability: a short right answer shares "
                        "few words with its question and typically scores 0.1 to 0.4. The "
                        "pass mark is 0.19 (above it the answer addresses the question; "
                        "fitted on HotpotQA). Compare pipelines with each other, not with 1.",
    "seconds_per_item": "wall-clock seconds per item, answering and judging.",
}
#: Pass marks drawn as dashed lines on the judges' plots.
THRESHOLDS: dict[str, float] = {"context_relevance": 0.5, "faithfulness": 0.5,
                                "answer_relevance": 0.19}


def summarize(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per (pipeline, condition): counts, accuracy, refusal rate, mean scores."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in results:
        groups.setdefault((r.pipeline, r.condition), []).append(r)
    metrics = sorted({k for r in results for k in r.scores})
    rows = []
    for (pipeline, condition), rs in groups.items():
        ok = [r for r in rs if r.error is None]
        follows = [r.meta["follows_counterfactual"] for r in ok
                   if "follows_counterfactual" in r.meta]
        row: dict[str, Any] = {
            "pipeline": pipeline, "condition": condition, "n": len(rs),
            "accuracy": mean(float(r.correct) for r in ok),
            "refusal_rate": mean(float(r.refused) for r in ok),
            "follows_counterfactual": mean(float(f) for f in follows) if follows
            else float("nan"),
            "errors": len(rs) - len(ok),
            "seconds_per_item": mean(r.seconds for r in ok),
        }
        for m in metrics:
            row[m] = mean(r.scores[m] for r in ok if m in r.scores)
            row[f"{m}_nan_share"] = (sum(1 for r in ok if m in r.scores
                                         and math.isnan(r.scores[m])) / len(ok)) if ok else 0.0
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no results)\n"
    columns = list(columns or [c for c in rows[0] if not c.endswith("_nan_share")])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600: a report is for others to read too
    os.replace(tmp, path)


def scales_text(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """``(metric, how to read it)`` for each metric that has an explanation."""
    return [(m, SCALES[m]) for m in metrics if m in SCALES]


def _csv(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list | dict) else v)
                             for k, v in r.items()})
    return buf.getvalue().encode("utf-8")


def _metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    return ["accuracy", "refusal_rate", *sorted(
        {k for r in rows for k in r if k not in _FIXED and k not in ("pipeline", "condition")
         and not k.endswith("_nan_share")})]


def bar_chart(rows: Sequence[dict[str, Any]], metric: str) -> Any:
    """One metric's bar chart (a matplotlib figure): pipelines side by side per condition,
    each bar labelled with its value, the legend to the right of the axes (never over a
    bar), the judge's pass mark dashed where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(conditions) + 3), 3.8))
    width = 0.8 / max(1, len(pipelines))
    top = 0.0
    for p, pipeline in enumerate(pipelines):
        values, labels = [], []
        for c in conditions:
            row = next((r for r in rows if r["pipeline"] == pipeline
                        and r["condition"] == c), None)
            v = row.get(metric, float("nan")) if row else float("nan")
            missing = v is None or v != v
            values.append(0.0 if missing else float(v))
            labels.append("n/a" if missing else f"{float(v):.2f}")
        bars = ax.bar([i + p * width for i in range(len(conditions))], values, width,
                      label=pipeline)
        ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
        top = max(top, *values)
    ax.set_xticks([i + width * (len(pipelines) - 1) / 2 for i in range(len(conditions))],
                  conditions, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    if metric == "seconds_per_item":
        ax.set_ylim(0, top * 1.15 or 1.0)
    else:
        ax.set_ylim(0, 1.12)  # room above a bar of 1.0 for its label
    if metric in THRESHOLDS:
        ax.axhline(THRESHOLDS[metric], color="0.4", linestyle="--", linewidth=1,
                   label=f"pass mark {THRESHOLDS[metric]:g}")
    ax.set_title(metric.replace("_", " "))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              frameon=False)
    fig.tight_layout()
    return fig


def _plots(rows: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    for metric in _metrics(rows):
        out[f"plot_{metric}.png"] = _png(bar_chart(rows, metric), plt)
    noise = [r for r in rows if r["condition"].startswith("noise ")]
    if noise:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for pipeline in pipelines:
            pts = sorted((float(r["condition"].split()[1]), r["accuracy"]) for r in noise
                         if r["pipeline"] == pipeline)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=pipeline)
                for x, y in pts:
                    if y == y:
                        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points",
                                    xytext=(0, 5), ha="center", fontsize=7)
        ax.set_xlabel("noise ratio")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.12)
        ax.set_title("noise robustness")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, frameon=False)
        fig.tight_layout()
        out["noise_curve.png"] = _png(fig, plt)
    return out


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(results: Sequence[Any], folder: str | os.PathLike[str],
                 title: str = "expertrag evaluation",
                 extra_tables: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the report files into ``folder``; returns ``{name: path}``."""
    from dataclasses import asdict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    table = markdown_table(rows)
    scales = "".join(f"- **{m}**: {text}\n" for m, text in scales_text(_metrics(rows)))
    files: dict[str, bytes] = {
        "report.md": (f"# {title}\n\n{table}\n## How to read the scores\n\n{scales}" + "".join(
            f"\n## {name}\n\n{text}\n" for name, text in (extra_tables or {}).items())
        ).encode("utf-8"),
        "summary.csv": _csv(rows),
        "results.csv": _csv([asdict(r) for r in results]),
    }
    plots = _plots(rows)
    files.update(plots)
    files["report.html"] = _html(title, rows, plots, extra_tables or {}).encode("utf-8")
    written = {}
    for name, data in files.items():
        _atomic_bytes(folder / name, data)
        written[name] = folder / name
    return written


def _html(title: str, rows: Sequence[dict[str, Any]], plots: dict[str, bytes],
          extra: dict[str, str]) -> str:
    columns = [c for c in (rows[0] if rows else {}) if not c.endswith("_nan_share")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(name)}</figcaption>'
        "</figure>" for name, data in plots.items())
    extras = "".join(f"<h2>{html.escape(k)}</h2><pre>{html.escape(v)}</pre>"
                     for k, v in extra.items())
    scales = "".join(f"<dt>{html.escape(m)}</dt><dd>{html.escape(text)}</dd>"
                     for m, text in scales_text(_metrics(rows) if rows else []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th {{ background: #f0f3f7; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
figure {{ display: inline-block; margin: 1rem; }} img {{ max-width: 640px; }}
dt {{ font-weight: 600; margin-top: 0.4rem; }} dd {{ margin-left: 1.2rem; max-width: 60rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>How to read the scores</h2><dl>{scales}</dl>
{extras}
<h2>Plots</h2>{images}
</body></html>
"""
