"""``report.html``: one self-contained page per run (images embedded, no server, no internet) — and the
side-by-side comparison of runs that ``tailor compare`` prints.

The report is built only from the files a run leaves in its folder, so ``tailor report RUN_DIR`` can rebuild
it at any time.
"""

from __future__ import annotations

from tailor import run_folder
import base64
import html
import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from tailor.evaluation.embedding_map import thumbnail_uri
from tailor.evaluation.metrics import format_rate
from tailor.files import atomic_write

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
.sub{color:#666}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1.2rem;min-width:9rem}
.card b{display:block;font-size:1.8rem}table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}th{cursor:pointer;background:#f6f6f6}
td:first-child,th:first-child{text-align:left}tr.unseen td{color:#a33}tr.nameonly td{color:#36a}
img.plot{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:.8rem;overflow:auto;font-size:.8rem}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}.gallery figure{margin:0;width:120px;font-size:.75rem}
.gallery img{width:120px;height:120px;object-fit:contain;border:1px solid #eee}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #999;margin-right:.4em;vertical-align:-.1em}
"""

# Click a header to sort by it; numbers sort numerically. Inline, so the page needs nothing from outside.
_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t.toLowerCase() : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  rows.forEach(r => body.appendChild(r));
}));
"""

SECTIONS = ("summary", "data", "metrics", "attributes", "knn", "map", "fewshot", "curves", "confusion", "per-class", "mistakes",
            "audit", "config")
AUDIT_SHOWN = 24  # suspicious labels shown in the audit section (the CSV has every product)


def _png(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _e(value) -> str:
    return html.escape(str(value))


def _metric_cards(results: dict) -> str:
    cards = [("top-1", results.get("top1")), ("top-5", results.get("top5")),
             ("mean top-1 over attributes", results.get("mean_top1")),
             ("seen-class top-1", results.get("seen_top1") if results.get("num_unseen_class_rows") else None),
             ("name-only top-1", results.get("name_only_top1")), ("name-only top-5", results.get("name_only_top5")),
             ("best validation", results.get("best_val_acc")),
             ("best validation kNN", results.get("best_val_knn_acc")), ("test images", results.get("num_test")),
             ("seconds", results.get("seconds"))]
    body = "".join(f'<div class="card">{_e(name)}<b>{value:.4f}</b></div>' if isinstance(value, float) and value <= 1
                   else f'<div class="card">{_e(name)}<b>{_e(value)}</b></div>'
                   for name, value in cards if value is not None)
    return f'<div class="cards">{body}</div>'


def _swatch(colour: str | None) -> str:
    """A small square of a class's measured colour (colour heads only)."""
    if not colour:
        return ""
    return (f'<span class="swatch" style="background:{_e(colour)}" title="median foreground colour of its test '
            f'photos: {_e(colour)}"></span>')


def _row_class(c: dict) -> str:
    return "nameonly" if c.get("name_only") else "" if c["seen"] else "unseen"


def _row_mark(c: dict) -> str:
    return " †" if c.get("name_only") else "" if c["seen"] else " *"


def _per_class_table(per_class: list[dict]) -> str:
    rows = sorted(per_class, key=lambda c: (c["top1"], -c["support"]))  # worst classes first
    head = "<tr><th>class</th><th>top-1</th><th>top-5</th><th>test images</th><th>training images</th></tr>"
    body = "".join(
        f'<tr class="{_row_class(c)}"><td>{_swatch(c.get("swatch"))}{_e(c["class"])}{_row_mark(c)}</td>'
        f'<td>{c["top1"]:.4f}</td><td>{format_rate(c["top5"])}</td><td>{c["support"]}</td><td>{c["train_count"]}</td></tr>'
        for c in rows)
    note = ('<p class="sub">* no training example of this class: its images count as errors.</p>'
            if any(not c["seen"] for c in rows) else "")
    note += ('<p class="sub">† no training image: the model knows this class by its name and place in the '
             'catalog (a name-only class).</p>' if any(c.get("name_only") for c in rows) else "")
    return f'<table class="sortable"><thead>{head}</thead><tbody>{body}</tbody></table>{note}'


def _confused_pairs(result: dict, swatches: dict[str, str | None]) -> str:
    """The head's most frequent mistakes (colour heads record them: overlapping names such as Navy Blue / Blue)."""
    pairs = result.get("confused_pairs")
    if not pairs:
        return ""
    body = "".join(f"<tr><td>{_swatch(swatches.get(p['true']))}{_e(p['true'])}</td>"
                   f"<td>{_swatch(swatches.get(p['predicted']))}{_e(p['predicted'])}</td><td>{p['count']}</td></tr>"
                   for p in pairs)
    return ("<h4>Most confused</h4><table><thead><tr><th>true</th><th>predicted</th><th>test images</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _attributes(run_dir: Path, results: dict) -> str:
    """The multi-attribute summary table, then each head's confusion matrix and per-class table (folded)."""
    heads = results["attribute_results"]
    head = ("<tr><th>attribute</th><th>classes</th><th>top-1</th><th>top-5</th><th>test images</th>"
            "<th>values never trained on</th><th>rows without a value</th></tr>")
    body = "".join(f"<tr><td>{_e(a)}</td><td>{r['classes']}</td><td>{r['top1']:.4f}</td><td>{format_rate(r.get('top5'))}"
                   f"</td><td>{r['num_test']}</td><td>{r['num_unseen_class_rows']}</td><td>{r.get('num_missing', 0)}</td></tr>"
                   for a, r in heads.items())
    details = []
    for a, r in heads.items():
        swatches = {c["class"]: c.get("swatch") for c in r.get("per_class", [])}
        src = _png(run_dir / "heads" / a / "confusion.png")
        picture = f'<img class="plot" src="{src}" alt="confusion matrix of {_e(a)}">' if src else ""
        details.append(f"<details><summary><b>{_e(a)}</b>: top-1 {r['top1']:.4f} on {r['num_test']} images</summary>"
                       f"{picture}{_confused_pairs(r, swatches)}{_per_class_table(r.get('per_class', []))}</details>")
    return (f'<table class="sortable"><thead>{head}</thead><tbody>{body}</tbody></table>'
            f"<p class='sub'>Top-5 only where an attribute has more than five classes. Open an attribute for its "
            f"confusion matrix and per-class table.</p>{''.join(details)}")


def _fewshot_table(results: dict) -> str:
    settings = results["fewshot"]
    head = "<tr><th>setting</th><th>accuracy</th><th>95 % CI</th><th>episodes</th><th>novel classes</th></tr>"
    body = "".join(f"<tr><td>{_e(name)}</td><td>{r['accuracy']:.4f}</td><td>± {r['ci95']:.4f}</td>"
                   f"<td>{r['episodes']}</td><td>{r['classes']}</td></tr>" for name, r in settings.items())
    return f'<table class="sortable"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _knn_table(results: dict) -> str:
    knn = results.get("knn")
    if not knn:
        return "<p class='sub'>This run has no kNN evaluation.</p>"
    names = {"trained": "trained embedding", "whitened": "frozen features, whitened within classes (no training)",
             "frozen": "frozen ImageNet features"}
    columns = [("top20", "top-20 classes"), ("all", "all classes"), ("rare", "rare classes")]
    within = any("top20_within" in knn[key] for key in names if key in knn)
    if within:
        columns += [("top20_within", "top-20, own group"), ("all_within", "all, own group"),
                    ("rare_within", "rare, own group")]
    head = "<tr><th>embedding</th>" + "".join(f"<th>{title}</th>" for _, title in columns) + "</tr>"
    cell = lambda v: f"<td>{v:.4f}</td>" if isinstance(v, float) else "<td>–</td>"  # noqa: E731
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(cell(knn[key].get(g)) for g, _ in columns) + "</tr>"
                   for key, label in names.items() if key in knn)
    note = (" The <em>own group</em> columns search only the training products of the query's own group (top 20 "
            "or rare), as the seed's separate datasets did.") if within else ""
    return (f"<table>{head}{body}</table><p class='sub'>k = {_e(knn.get('k'))}, {_e(knn.get('weighting'))} "
            f"weighting; the test products against every training product.{note}</p>")


def _map(run_dir: Path) -> str:
    src = _png(run_dir / "tsne.png")
    if not src:
        return "<p class='sub'>This run has no embedding map.</p>"
    link = ("<p class='sub'>Interactive version, with each product's image on hover: "
            "<a href='tsne.html'>tsne.html</a> (beside this report).</p>") if (run_dir / "tsne.html").is_file() else ""
    return f'<img class="plot" src="{src}" alt="t-SNE map of the test embeddings">{link}'


def _gallery(run_dir: Path, results: dict) -> str:
    mistakes_csv = run_dir / "mistakes.csv"
    if not mistakes_csv.is_file():
        return "<p>No mistakes recorded.</p>"
    mistakes = pd.read_csv(mistakes_csv)
    if mistakes.empty:
        return "<p>No mistakes: every test image was classified correctly.</p>"
    root = Path(results.get("data_root", "."))
    figures = []
    for row in mistakes.itertuples():
        src = thumbnail_uri(root / row.image, 120)
        picture = f'<img src="{src}" alt="{_e(row.image)}">' if src else "<div>(image unavailable)</div>"
        figures.append(f"<figure>{picture}<figcaption><b>{_e(row.predicted)}</b> ({row.confidence:.0%})<br>"
                       f"true: {_e(row.true)}</figcaption></figure>")
    return f'<div class="gallery">{"".join(figures)}</div>'


def _audit(run_dir: Path) -> str:
    """``tailor audit``'s findings: the most suspicious labels and the near-duplicate pairs, as thumbnails."""
    folder = run_dir / "audit"
    issues, pairs = pd.read_csv(folder / "label_issues.csv"), pd.read_csv(folder / "duplicates.csv")
    summary = json.loads((folder / "summary.json").read_text())
    root = Path(summary["data_root"])

    def tile(image: str, caption: str) -> str:
        src = thumbnail_uri(root / image, 120)
        picture = f'<img src="{src}" alt="{_e(image)}">' if src else "<div>(image unavailable)</div>"
        return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"

    labels = "".join(tile(r.image, f"#{_e(r.id)} labelled <b>{_e(r.label)}</b><br>looks like {_e(r.suggested)} "
                                   f"({r.suggested_probability:.0%})") for r in issues.head(AUDIT_SHOWN).itertuples())
    twins = "".join(tile(r.image_a, f"#{_e(r.id_a)} {_e(r.label_a)}") + tile(r.image_b, f"#{_e(r.id_b)} {_e(r.label_b)}"
                                                                                  f"<br>cosine {r.cosine:.3f}")
                    for r in pairs.head(AUDIT_SHOWN // 2).itertuples())
    return (f"<p class='sub'>{summary['products']} training products of {_e(summary['csv'])}: "
            f"{summary['flagged_labels']} labels look wrong (confident learning on {summary['folds']}-fold held-out "
            f"probabilities), {summary['duplicate_pairs']} pairs of photos are all but the same (cosine ≥ "
            f"{summary['duplicate_cosine']}). Most suspicious first; every product is in audit/label_issues.csv.</p>"
            f"<h3>Labels that look wrong</h3><div class='gallery'>{labels}</div>"
            f"<h3>Listed twice?</h3><div class='gallery'>{twins or '<p>No near-duplicate pairs.</p>'}</div>")


def read_results(run_dir: Path) -> dict:
    results_file = run_dir / run_folder.RESULTS
    if not results_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (is this a finished tailor run?)")
    return json.loads(results_file.read_text())


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run's files and return its path."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    results_file = run_dir / run_folder.RESULTS
    config_file = next((p for p in (run_dir / run_folder.OPERATIVE_CONFIG, run_dir / run_folder.CONFIG) if p.is_file()), None)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(results_file.stat().st_mtime))
    classes = results.get("classes") or []
    unseen = [c["class"] + (" †" if c.get("name_only") else "") for c in results.get("per_class", [])
              if not c["seen"] or c.get("name_only")]
    data_rows = [("training images", results.get("train_images")), ("validation images", results.get("val_images")),
                 ("classes trained", len(classes) or None), ("test images", results.get("num_test")),
                 ("test split", results.get("test_csv", "") + (f' ({results["test_group"]})' if results.get("test_group") else "")),
                 ("test classes with no training example",
                  (", ".join(unseen) or "none") if "per_class" in results else None),
                 ("base images (few-shot training and centring)", results.get("base_images")),
                 ("base classes", results.get("base_classes")), ("novel images", results.get("novel_images")),
                 ("novel classes (episodes draw from those with K + Q images or more)",
                  ", ".join(results["test_classes"]) if results.get("test_classes") else None)]
    data_table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in data_rows if v not in (None, ""))

    def figure(name: str, caption: str, why_missing: str) -> str:
        src = _png(run_dir / name)
        return (f'<img class="plot" src="{src}" alt="{_e(caption)}">' if src
                else f'<p class="sub">No {_e(caption)} for this run ({_e(why_missing)}).</p>')

    # one label per image, scored per class: a multi-attribute run shows these per attribute instead, and a
    # few-shot run scores episodes, not classes
    single = "attribute_results" not in results and "per_class" in results
    sections = {
        "summary": f"<p class='sub'>{_e(results.get('method', ''))} · {_e(results.get('mode', ''))} · "
                   f"seed {_e(results.get('seed', ''))} · {when}</p>",
        "data": f"<h2>Data</h2><table>{data_table}</table>",
        "metrics": f"<h2>Headline metrics</h2>{_metric_cards(results)}",
        "attributes": f"<h2>Attributes</h2>{_attributes(run_dir, results)}" if results.get("attribute_results") else "",
        "knn": f"<h2>kNN classification</h2>{_knn_table(results)}" if results.get("knn") else "",
        "map": f"<h2>Embedding map (t-SNE)</h2>{_map(run_dir)}" if results.get("knn") else "",
        "fewshot": f"<h2>Few-shot episodes</h2>{_fewshot_table(results)}" if results.get("fewshot") else "",
        "curves": f"<h2>Training curves</h2>"
                  f"{figure('curves.png', 'training curves', 'nothing was trained step by step: a linear probe or training-free prototypes')}",
        "confusion": f"<h2>Confusion matrix</h2>"
                     f"{figure('confusion.png', 'confusion matrix', 'it was not evaluated on a test table')}" if single else "",
        "per-class": f"<h2>Per class</h2><p class='sub'>Worst first; click a header to sort.</p>"
                     f"{_per_class_table(results.get('per_class', []))}" if single else "",
        "mistakes": f"<h2>Most confident mistakes</h2>{_gallery(run_dir, results)}" if single else "",
        "audit": f"<h2>Catalog audit</h2>{_audit(run_dir)}" if (run_dir / "audit" / "summary.json").is_file() else "",
        "config": f"<h2>Configuration</h2><pre>{_e(config_file.read_text() if config_file else '')}</pre>",
    }
    body = "".join(f'<section id="{name}">{sections[name]}</section>' for name in SECTIONS if sections[name])
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(run_dir.name)} — tailor</title>"
            f"<style>{_STYLE}</style></head><body><h1>{_e(run_dir.name)}</h1>{body}"
            f"<script>{_SORT_SCRIPT}</script></body></html>")
    path = run_dir / run_folder.REPORT
    atomic_write(path, lambda f: f.write(page), mode="w")
    return path


COMPARE_COLUMNS = ("top1", "top5", "seen_top1", "num_test", "best_val_acc", "seconds")


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[str, Path, Path]:
    """A markdown table of the runs' headline metrics, written as ``out``.md with a bar chart ``out``.png."""
    rows = []
    for run_dir in map(Path, run_dirs):
        results = read_results(run_dir)
        rows.append({"run": run_dir.name, "method": results.get("method", ""),
                     **{k: results.get(k) for k in COMPARE_COLUMNS}})
    table = pd.DataFrame(rows)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else f"{v:.4f}" if isinstance(v, float) and v <= 1
                                       else f"{v:g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    markdown = "\n".join(lines) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out.with_suffix(".md"), out.with_suffix(".png")
    md_path.write_text(markdown)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.6), constrained_layout=True)
    width = 0.38
    for i, metric in enumerate(("top1", "top5")):
        values = [r[metric] or 0 for r in rows]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(rows))], values, width, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return markdown, md_path, png_path
