"""report: one readable page per run from its eval and baseline results.

Reads ``RUN_DIR/eval/results.json`` (distilled sets) and ``RUN_DIR/eval/baseline-<kind>.json``,
and writes::

    RUN_DIR/report.md                    tables (accuracy, macro-F1 [, positive-class F1]) by ipc,
                                         the protocol, and the nearest real texts of each synthetic vector
    RUN_DIR/report.json                  the same numbers
    RUN_DIR/plots/accuracy_vs_ipc.png    accuracy against ipc (log axis), error bars, full/majority lines
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from distillctl.errors import UserError
from distillctl.plugins import with_registry

#: table columns: (arm in the results, header)
COLUMNS = (("distilled", "distilled"), ("random", "random"), ("herding", "herding"), ("kcenter", "k-center"),
           ("full", "full"), ("majority", "majority"))
SUBSET_ARMS = ("distilled", "random", "herding", "kcenter")
METRICS = (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("positive_f1", "Positive-class F1"))
#: nearest real training texts shown per synthetic vector, and their length in the report
NEIGHBOURS = 3
TEXT_CHARS = 200
#: heading of report.md's nearest-texts part; what comes before it is the tables (what the CLI prints)
NEAREST_HEADING = "## What the synthetic vectors stand for"


def collect_results(run_path: Path) -> list[dict]:
    """Every result record of a run: distilled sets, then each baseline file."""
    from distillctl.protocol import read_results

    records = list(read_results(run_path / "eval" / "results.json"))
    for f in sorted((run_path / "eval").glob("baseline-*.json")):
        records += read_results(f)
    return records


def _protocol(rec: dict) -> tuple:
    import json

    return (rec.get("student"), json.dumps(rec.get("student_options"), sort_keys=True),
            json.dumps(rec.get("budget"), sort_keys=True), tuple(rec.get("seeds") or ()))


def _pct(summary: dict | None) -> str:
    if not summary:
        return "–"
    if len(summary.get("values") or []) == 1 and not summary["std"]:  # deterministic (majority)
        return f"{summary['mean'] * 100:.2f}"
    return f"{summary['mean'] * 100:.2f} ± {summary['std'] * 100:.2f}"


def _options(opts: dict | None) -> str:
    opts = {k: v for k, v in (opts or {}).items() if k != "name"}
    return "(" + ", ".join(f"{k}: {v}" for k, v in opts.items()) + ")" if opts else ""


def build_tables(records: list[dict]) -> dict:
    """Rows by ipc for each metric, the full/majority lines, the common protocol and any deviation."""
    from distillctl.training import TrainBudget

    by_arm: dict[str, dict] = {}
    for r in records:
        by_arm.setdefault(r["arm"], {})[r.get("ipc")] = r
    ipcs = sorted({ipc for arm in SUBSET_ARMS for ipc in by_arm.get(arm, {}) if ipc is not None})
    trained = [r for r in records if r.get("budget")]
    # the protocol most records share; every other one is flagged in the report
    counts: dict[tuple, int] = {}
    for r in trained:
        counts[_protocol(r)] = counts.get(_protocol(r), 0) + 1
    common = max(counts, key=counts.get) if counts else None
    ref = next((r for r in trained if _protocol(r) == common), None)
    deviations = [f"{r['arm']} ipc {r.get('ipc')}: student {r.get('student')}, "
                  f"{TrainBudget(**r['budget']).describe()}, K = {len(r.get('seeds') or [])}"
                  for r in trained if _protocol(r) != common]
    metrics = [m for m, _ in METRICS if any(m in r for r in records)]
    tables = {}
    for m in metrics:
        rows = []
        for ipc in ipcs:
            row: dict[str, Any] = {"ipc": ipc}
            for arm, _ in COLUMNS:
                rec = by_arm.get(arm, {}).get(ipc if arm in SUBSET_ARMS else None)
                row[arm] = rec.get(m) if rec else None
            d, r = row["distilled"], row["random"]
            row["gain_over_random"] = (d["mean"] - r["mean"]) if d and r else None
            rows.append(row)
        tables[m] = rows
    line = lambda arm: (by_arm.get(arm, {}).get(None))  # noqa: E731
    any_rec = records[0] if records else {}
    return {
        "ipcs": ipcs,
        "metrics": metrics,
        "tables": tables,
        "full": {m: line("full").get(m) for m in metrics} if line("full") else None,
        "majority": any_rec.get("majority"),
        "chance": any_rec.get("chance"),
        "n_test": any_rec.get("n_test"),
        "protocol": None if ref is None else {
            "student": ref.get("student"), "student_options": ref.get("student_options"),
            "budget": ref.get("budget"), "seeds": ref.get("seeds"), "split": ref.get("split", "test"),
        },
        "deviations": deviations,
        "deviating": {(r["arm"], r.get("ipc")) for r in trained if _protocol(r) != common},
    }


def _markdown_table(rows: list[dict], deviating: set) -> list[str]:
    head = ["IPC"] + [h for _, h in COLUMNS] + ["gain over random"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for row in rows:
        cells = [str(row["ipc"])]
        for arm, _ in COLUMNS:
            cell = _pct(row[arm])
            key = (arm, row["ipc"] if arm in SUBSET_ARMS else None)
            if row[arm] and key in deviating:
                cell += " †"
            cells.append(cell)
        g = row["gain_over_random"]
        cells.append("–" if g is None else f"{g * 100:+.2f} pp")
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot_accuracy(summary: dict, path: Path, title: str) -> Path:
    """accuracy (%) against ipc on a log axis, error bars = std over seeds; full / majority / chance lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from distillctl.runs import atomic_write_bytes

    rows = summary["tables"].get("accuracy", [])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = {"distilled": "o", "random": "s", "herding": "^", "kcenter": "v"}
    colors = {"distilled": "C0", "random": "C1", "herding": "C2", "kcenter": "C3"}  # the same in every report
    for arm, header in COLUMNS[:4]:
        pts = [(r["ipc"], r[arm]) for r in rows if r[arm]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] * 100 for p in pts],
                        yerr=[p[1]["std"] * 100 for p in pts], marker=markers[arm], color=colors[arm], capsize=3,
                        label=header)
    full = (summary.get("full") or {}).get("accuracy")
    if full:
        ax.axhline(full["mean"] * 100, color="black", lw=1.2, label=f"full data ({full['mean'] * 100:.1f} %)")
        ax.axhspan((full["mean"] - full["std"]) * 100, (full["mean"] + full["std"]) * 100, color="black", alpha=0.08)
    maj = summary.get("majority")
    if maj:
        ax.axhline(maj["accuracy"] * 100, color="gray", ls="--", lw=1,
                   label=f"majority class ({maj['accuracy'] * 100:.1f} %)")
    if summary.get("chance") and (not maj or abs(summary["chance"] - maj["accuracy"]) > 1e-9):
        ax.axhline(summary["chance"] * 100, color="gray", ls=":", lw=1, label=f"chance ({summary['chance'] * 100:.1f} %)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # label only the ipc values
    if summary["ipcs"]:
        ax.set_xticks(summary["ipcs"])
        ax.set_xticklabels([str(i) for i in summary["ipcs"]])
    ax.set_xlabel("instances per class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def nearest_texts(run_path: Path, embeddings: Any, k: int = NEIGHBOURS) -> list[dict]:
    """For each synthetic vector of each distilled set: the k most cosine-similar real training texts."""
    import torch

    from distillctl.protocol import set_files, split_of
    from distillctl.synthetic import SyntheticSet

    train = split_of(embeddings, "train")
    if not callable(getattr(embeddings, "texts", None)):  # embeddings built in Python may carry no texts
        raise UserError("the embeddings carry no texts (no `texts(split)` method)")
    texts = embeddings.texts("train")
    X = torch.nn.functional.normalize(train.X.float(), dim=1)  # (n, d) unit rows
    if len(texts) != X.shape[0]:
        raise UserError(f"embeddings: {len(texts)} train texts for {X.shape[0]} train vectors")
    names = list(embeddings.label_names)
    out = []
    for f in set_files(run_path):
        s = SyntheticSet.load(f)
        if s.dim != X.shape[1]:
            continue  # reported by eval; nothing to compare against here
        sims = torch.nn.functional.normalize(s.x.float(), dim=1) @ X.T  # (ipc*C, n) cosine similarities
        top = sims.topk(min(k, X.shape[0]), dim=1)
        classes = s.hard_labels().tolist()
        vectors = []
        for row in range(s.x.shape[0]):
            vectors.append({
                "row": row, "class": names[classes[row]],
                "neighbours": [{"train_row": int(j), "similarity": round(float(v), 4),
                                "label": names[int(train.y[j])], "text": texts[int(j)]}
                               for v, j in zip(top.values[row], top.indices[row])],
            })
        out.append({"ipc": s.ipc, "set": str(f), "vectors": vectors})
    return out


def report_tables(report_md: Path) -> str:
    """report.md without its nearest-texts part: the protocol and the tables, for a terminal."""
    return Path(report_md).read_text(encoding="utf-8").split(NEAREST_HEADING)[0].rstrip()


def _short(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


@with_registry  # registry=: run with that plugin registry (default: get_registry())
def report(run_dir: str | Path, *, quiet: bool | None = None, embeddings: Any = None) -> Path:
    """Write report.md, report.json and plots/accuracy_vs_ipc.png for a run; returns report.md's path.

    On a submission folder with several sweep points, write its comparison report instead
    (:mod:`distillctl.compare`: comparison.md / .json, plots/time_to_quality.png) and return that path.
    """
    from distillctl.compare import submission_points, write_comparison

    points = submission_points(Path(run_dir))
    if points:
        return write_comparison(run_dir, points)
    from distillctl.embed import load_embeddings
    from distillctl.protocol import collapse_notes, set_files
    from distillctl.runs import atomic_write_json, atomic_write_text, open_run_dir
    from distillctl.training import TrainBudget

    # 1. The results of the run.
    run = open_run_dir(run_dir)
    recipe = run.load_recipe()
    records = collect_results(run.path)
    if not records:
        raise UserError(f"{run_dir}: no results in {run.eval} (run `distillctl eval {run_dir}` and "
                        f"`distillctl baseline RECIPE --kind random --run-dir {run_dir}` first)")
    summary = build_tables(records)

    # 2. The plot.
    plot = plot_accuracy(summary, run.plots / "accuracy_vs_ipc.png", f"{recipe.name}: test accuracy vs IPC")

    # 3. Nearest real texts of the synthetic vectors (needs the embedding cache and its texts).
    nearest, nearest_note = [], None
    if set_files(run.path):
        try:
            if embeddings is None:
                embeddings = load_embeddings(recipe, quiet=quiet)
            nearest = nearest_texts(run.path, embeddings)
        except (UserError, NotImplementedError) as exc:
            nearest_note = f"nearest texts unavailable: {exc}"

    # 4. report.md
    p = summary["protocol"]
    md = [f"# {recipe.name}: distilled sets against baselines", ""]
    if recipe.description:
        md += [recipe.description, ""]
    md += [f"Run directory: `{run.path}`", ""]
    if p:
        seeds = p["seeds"] or []
        md += ["## Protocol", "",
               f"- Student: `{p['student']}` {_options(p.get('student_options'))}",
               f"- Budget (every trained arm): {TrainBudget(**p['budget']).describe()}",
               f"- K = {len(seeds)} seeds per cell ({seeds[0]}..{seeds[-1]}); cells are mean ± std over seeds "
               f"(population std), in %",
               f"- Scored once on the `{p['split']}` split (n = {summary['n_test']}); nothing was selected on it",
               "- `random` draws new real rows per seed; `herding` / `k-center` are deterministic coresets "
               "chosen in embedding space per class; `full` trains on every training row", ""]
    if summary["majority"]:
        m = summary["majority"]
        md += [f"Majority class `{m['class']}`: accuracy {m['accuracy'] * 100:.2f} %, macro-F1 "
               f"{m['macro_f1'] * 100:.2f} %" + (f", positive-class F1 {m['positive_f1'] * 100:.2f} %"
                                                  if "positive_f1" in m else "")
               + f". Chance: {summary['chance'] * 100:.2f} %.", ""]
    if summary["deviations"]:
        md += ["**† Different protocol** (not comparable with the other cells):", ""]
        md += [f"- {d}" for d in summary["deviations"]] + [""]
    collapsed = collapse_notes(records)
    if collapsed:
        md += ["**Single-class students** (such a student scores the share of its one class in test):", ""]
        md += [f"- {n}" for n in collapsed] + [""]
    for metric, title in METRICS:
        if metric not in summary["tables"]:
            continue
        md += [f"## {title} (%) by instances per class", ""]
        rows = summary["tables"][metric]
        if rows:
            md += _markdown_table(rows, summary["deviating"]) + [""]
        full = (summary["full"] or {}).get(metric)
        if full or not rows:
            md += [f"Full training data: {_pct(full)}" if full else "No per-ipc results yet.", ""]
    md += ["![accuracy vs ipc](plots/accuracy_vs_ipc.png)", ""]
    if nearest or nearest_note:
        md += [NEAREST_HEADING, "",
               f"For each synthetic vector, the {NEIGHBOURS} real training texts nearest by cosine similarity "
               "(similarity, the text's true label).", ""]
        if nearest_note:
            md += [f"_{nearest_note}_", ""]
        for s in nearest:
            md += [f"<details><summary>ipc {s['ipc']} ({len(s['vectors'])} vectors)</summary>", "",
                   "| vector | class | # | cos | label | text |", "|---:|---|---:|---:|---|---|"]
            for v in s["vectors"]:
                for rank, nb in enumerate(v["neighbours"], 1):
                    md.append(f"| {v['row'] if rank == 1 else ''} | {v['class'] if rank == 1 else ''} | {rank} | "
                              f"{nb['similarity']:.3f} | {nb['label']} | {_short(nb['text'])} |")
            md += ["", "</details>", ""]
    md_path = atomic_write_text(run.path / "report.md", "\n".join(md))

    # 5. report.json
    out = {k: v for k, v in summary.items() if k != "deviating"}
    out.update({"run_dir": str(run.path), "recipe": recipe.name, "report": str(md_path), "plot": str(plot),
                "nearest": nearest, "nearest_note": nearest_note, "single_class": collapsed, "results": records})
    atomic_write_json(run.path / "report.json", out)
    return md_path
