"""Evaluation reports: a Markdown table, CSV files, PNG plots and one self-contained HTML page.

:func:`summarize` aggregates :class:`~expertrag.evaluation.runner.CaseResult` rows per
(pipeline, condition); :func:`write_report` writes into a folder:

- ``report.md``: the summary table;
- ``summary.csv`` and ``results.csv`` (one row per scored item);
- ``plot_<metric>.png``: one bar chart per metric, pipelines side by side per condition;
- ``noise_curve.png``: accuracy against the noise ratio, one line per pipeline;
- ``report.html``: the table and every plot (embedded), opens in any browser.

Every file is written to a temporary name first and renamed into place.
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
    os.replace(tmp, path)


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


def _plots(rows: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    metrics = ["accuracy", "refusal_rate", *sorted(
        {k for r in rows for k in r if k not in _FIXED and k not in ("pipeline", "condition")
         and not k.endswith("_nan_share")})]
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(conditions) + 2), 3.6))
        width = 0.8 / max(1, len(pipelines))
        for p, pipeline in enumerate(pipelines):
            values = []
            for c in conditions:
                row = next((r for r in rows if r["pipeline"] == pipeline
                            and r["condition"] == c), None)
                v = row.get(metric, float("nan")) if row else float("nan")
                values.append(0.0 if v != v else v)
            ax.bar([i + p * width for i in range(len(conditions))], values, width,
                   label=pipeline)
        ax.set_xticks([i + width * (len(pipelines) - 1) / 2 for i in range(len(conditions))],
                      conditions, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05 if metric != "seconds_per_item" else None)
        ax.set_title(metric.replace("_", " "))
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[f"plot_{metric}.png"] = _png(fig, plt)
    noise = [r for r in rows if r["condition"].startswith("noise ")]
    if noise:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for pipeline in pipelines:
            pts = sorted((float(r["condition"].split()[1]), r["accuracy"]) for r in noise
                         if r["pipeline"] == pipeline)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=pipeline)
        ax.set_xlabel("noise ratio")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title("noise robustness")
        ax.legend(fontsize=8)
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
    files: dict[str, bytes] = {
        "report.md": (f"# {title}\n\n{table}\n" + "".join(
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }}
th {{ background: #f0f3f7; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
figure {{ display: inline-block; margin: 1rem; }} img {{ max-width: 560px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{extras}
<h2>Plots</h2>{images}
</body></html>
"""
