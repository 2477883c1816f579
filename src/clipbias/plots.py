"""Figures of the report notebooks (seaborn/matplotlib).

Every function takes DataFrames/dicts read from the result tables (docs/DESIGN.md, "Result
tables"; readers in :mod:`clipbias.report`) and an output path *stem* ``out``; it writes
``out.png`` and ``out.pdf`` and returns the :class:`matplotlib.figure.Figure`.

Figures are built as :class:`~matplotlib.figure.Figure` objects rendered by the Agg canvas,
never through ``pyplot``: no global figure registry, no GUI backend, and the caller's
matplotlib backend is left alone (a notebook shows the returned figure with ``display``).
Styling is applied in an ``rc_context``, so global rcParams are untouched. Colours come from
seaborn's colour-blind palette; heatmaps use a diverging map centred at 0.
"""

from __future__ import annotations

import functools
import logging
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from clipbias import report
from clipbias.io import atomic_path, rehearsal_banner

log = logging.getLogger(__name__)

PALETTE = sns.color_palette("colorblind")
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "viridis"
S_COLOUR = PALETTE[3]  # vermillion: located spurious heads
Y_COLOUR = PALETTE[0]  # blue: located salient heads
LTC_COLOUR = PALETTE[1]  # orange
ZERO_SHOT_COLOUR = "0.35"
DPI = 200
AXIS_LABELS = {
    "worst_group_acc": "Worst-group accuracy (%)",
    "avg_acc": "Average accuracy (%)",
    "avg_group_acc": "Group-average accuracy (%)",
    "gap": "Gap (percentage points)",
}


def _style() -> dict[str, Any]:
    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper", font_scale=1.25))
    rc.update(
        {
            "axes.titleweight": "bold",
            "figure.titlesize": 13,
            "figure.titleweight": "bold",
            "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.08,
            "svg.hashsalt": "clipbias",
        }
    )
    return rc


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_style()):
            return fn(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, **kwargs) -> Figure:
    """A pyplot-free figure on the Agg canvas."""
    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _stem(out: str | os.PathLike) -> Path:
    p = Path(out)
    return p.with_suffix("") if p.suffix.lower() in {".png", ".pdf"} else p


def save_figure(fig: Figure, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``out.png`` (200 dpi) and ``out.pdf`` atomically; returns the two paths.

    In a rehearsal's folder (:func:`clipbias.io.rehearsal_banner`) the figure carries the
    banner across its top, and in the files' metadata (PNG ``Comment``, PDF ``Subject``)."""
    stem = _stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    banner = rehearsal_banner(stem)
    png_meta: dict[str, Any] = {"Software": None}
    pdf_meta: dict[str, Any] = {"CreationDate": None}
    if banner:
        fig.text(
            0.5, 1.0, banner, ha="center", va="bottom", color="#b00000", fontsize=11,
            fontweight="bold", transform=fig.transFigure,
        )  # fmt: skip
        png_meta["Comment"] = banner
        pdf_meta["Subject"] = banner
    paths = {}
    for fmt, meta in (("png", png_meta), ("pdf", pdf_meta)):
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)
        paths[fmt] = path
    log.info("wrote figure %s.{png,pdf}", stem)
    return paths


def group_colours(n: int) -> list:
    """``n`` well-separated colours of the colour-blind palette (orange/vermillion kept apart)."""
    order = [0, 1, 2, 4, 9, 5, 6, 8, 3, 7]
    full = sns.color_palette("colorblind", 10)
    return [full[order[i % 10]] for i in range(n)]


def _head_sets(located: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(S, Y) head ids from an ltc.json dict or ``{"spurious": [ids], "salient": [ids]}``."""
    if not located:
        return [], []

    def ids(key):
        return [x["head"] if isinstance(x, Mapping) else str(x) for x in located.get(key, [])]

    return ids("spurious"), ids("salient")


# ---------------------------------------------------------------------------------------------
# LTC head heatmaps
# ---------------------------------------------------------------------------------------------


def _head_matrix(freq_df: pd.DataFrame, layers: Sequence[int], n_heads: int, col: str):
    mat = np.full((len(layers), n_heads), np.nan)
    row = {int(l): i for i, l in enumerate(layers)}
    head_col = "index" if "index" in freq_df.columns else "head"
    for _, r in freq_df.iterrows():
        l, h = int(r["layer"]), int(r[head_col])
        if l in row and 0 <= h < n_heads:
            mat[row[l], h] = r[col]
    return pd.DataFrame(mat, index=[int(l) for l in layers], columns=range(n_heads))


def _mark_heads(ax, layers, s_ids, y_ids):
    row = {int(l): i for i, l in enumerate(layers)}
    for ids, tag, colour, style in ((s_ids, "S", "black", "-"), (y_ids, "Y", "black", "--")):
        for hid in ids:
            l, h = (int(x) for x in hid[1:].split("H"))
            if l not in row:
                continue
            i = row[l]
            # a white halo under the black outline keeps it visible on dark cells
            ax.add_patch(Rectangle((h, i), 1, 1, fill=False, edgecolor="white", lw=4.2, zorder=3))
            ax.add_patch(
                Rectangle((h, i), 1, 1, fill=False, edgecolor=colour, lw=2.2, ls=style, zorder=3)
            )
            ax.text(
                h + 0.06,
                i + 0.08,
                tag,
                ha="left",
                va="top",
                fontsize=9,
                fontweight="bold",
                color=colour,
                zorder=4,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            )


def _kappa_text(located: Mapping[str, Any] | None) -> str:
    """The threshold sentence of the LTC heatmap (METHODS §4.5)."""
    if not located or "n_active" not in located:
        return ""
    n_act = located.get("n_active")
    if located.get("kappa") is None or not n_act:
        return "No head won any sample: κ is undefined and S and Y are empty."
    return (
        f"κ = 1/n_active = 1/{n_act} = {located['kappa']:.3f} (n_active = heads that are the "
        "top-1 head of at least one sample): S = heads with F_W − F_C > κ, Y = heads with "
        "F_W − F_C < −κ"
    )


@_styled
def head_heatmap(
    freq_df: pd.DataFrame,
    layers: Sequence[int],
    n_heads: int,
    located: Mapping[str, Any] | None,
    value: str = "f_wrong-f_correct",
    *,
    out: str | os.PathLike,
    title: str | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Layers x heads heatmap of the LTC top-1 frequencies, located heads marked.

    ``freq_df``: ``ltc.json["frequencies"]`` as a frame (``layer, index, f_correct,
    f_wrong``; :func:`clipbias.report.frequency_frame`). ``located``: the ltc.json dict (or
    ``{"spurious": [...], "salient": [...]}``); S heads get a solid box and "S", Y heads a
    dashed box and "Y". ``value="f_wrong-f_correct"`` draws one panel, F_W − F_C (diverging
    colours centred at 0; F_C − F_W is its negative), with the selection threshold ±κ drawn
    on the colour bar and explained under the figure when ``located`` is an ltc.json dict;
    ``value="frequencies"`` draws F_C and F_W side by side. Cells are annotated with their
    value when there are <= 100 heads.
    """
    df = freq_df.copy()
    if "f_wrong-f_correct" not in df.columns:
        df["f_wrong-f_correct"] = df["f_wrong"] - df["f_correct"]
    kappa = (located or {}).get("kappa")
    if value == "f_wrong-f_correct":
        panels = [("f_wrong-f_correct", "F_W − F_C: S above +κ (red), Y below −κ (blue)")]
        vmax = float(np.nanmax(np.abs(df["f_wrong-f_correct"])))
        if kappa is not None:  # keep the threshold on the colour bar
            vmax = max(vmax, 1.15 * float(kappa))
        vmax = vmax or 1.0
        cmap, vmin, center = DIVERGING_CMAP, -vmax, 0.0
        cbar_label = "F_W − F_C"
    elif value == "frequencies":
        panels = [("f_correct", "F_C (correct samples)"), ("f_wrong", "F_W (wrong samples)")]
        vmax = float(np.nanmax(df[["f_correct", "f_wrong"]].to_numpy())) or 1.0
        cmap, vmin, center, cbar_label = SEQUENTIAL_CMAP, 0.0, None, "top-1 frequency"
    else:
        raise ValueError(f"value must be 'f_wrong-f_correct' or 'frequencies', got {value!r}")
    layers = [int(l) for l in layers]
    s_ids, y_ids = _head_sets(located)
    if annotate is None:
        annotate = len(layers) * n_heads <= 100
    w = max(4.6, 0.55 * n_heads + 2.4)
    h = max(2.8, 0.42 * len(layers) + 1.4)
    fig = new_figure(len(panels) * w + 0.6, h + 1.2, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (col, label) in zip(axes, panels, strict=True):
        mat = _head_matrix(df, layers, n_heads, col)
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad (mpl >= 3.10)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                mat,
                ax=ax,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                center=center,
                annot=annotate,
                fmt=".2f",
                annot_kws={"fontsize": 8},
                linewidths=0.5,
                linecolor="white",
                square=False,
                cbar_kws={"label": cbar_label, "shrink": 0.9},
            )
        if col == "f_wrong-f_correct" and kappa is not None:
            cbar = ax.collections[0].colorbar
            for y, tag in ((kappa, "+κ"), (-kappa, "−κ")):
                cbar.ax.axhline(y, color="black", lw=1.6, ls="--")
                cbar.ax.text(-0.15, y, tag, transform=cbar.ax.get_yaxis_transform(),
                             ha="right", va="center", fontsize=9, fontweight="bold")  # fmt: skip
        _mark_heads(ax, layers, s_ids, y_ids)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("Head")
        ax.set_ylabel("Layer")
        ax.tick_params(axis="y", rotation=0)
    handles = [
        Patch(fc="white", ec="black", lw=2, ls="-", label=f"S: spurious ({len(s_ids)})"),
        Patch(fc="white", ec="black", lw=2, ls="--", label=f"Y: salient ({len(y_ids)})"),
    ]
    if kappa is not None and value == "f_wrong-f_correct":
        handles.append(Line2D([], [], color="black", ls="--", lw=1.6, label="±κ (colour bar)"))
    note = _kappa_text(located)
    if note and located is not None and located.get("locate_split"):
        note = (
            f"F_W, F_C = share of the wrong / correct samples of split "
            f"'{located['locate_split']}' whose top-1 head is this head. " + note
        )
    chars = int(15 * len(panels) * w)  # about 15 characters of 9 pt per inch
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
               title=textwrap.fill(note, chars) if note else None,
               title_fontproperties={"size": 9})  # fmt: skip
    sub = "" if kappa is None else f" (κ = {kappa:.3f})"
    fig.suptitle((title or "LTC head frequencies") + sub)
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# Group accuracies
# ---------------------------------------------------------------------------------------------


def _group_rows(metrics_df, methods, split, group_names):
    df = report.select_split(metrics_df, split)
    df = df[df["metric"].astype(str).str.startswith("acc_group_")].copy()
    if df.empty:
        raise ValueError("metrics table has no acc_group_<g> rows")
    df["gid"] = df["metric"].str.slice(len("acc_group_")).astype(int)
    if methods is None:
        methods = report.ordered_methods(df["method"].tolist())
    else:
        methods = [m for m in methods if m in set(df["method"])]
    gids = sorted(df["gid"].unique())
    names = {g: report.group_label(g, group_names, df) for g in gids}
    return df, list(methods), gids, names


@_styled
def group_accuracy(
    metrics_df: pd.DataFrame,
    out: str | os.PathLike,
    group_names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    split: str | None = None,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Per-group accuracy (%) of every method with its 95 % bootstrap interval.

    Methods on the x axis (display names, :data:`clipbias.report.METHOD_ORDER`), one bar per
    group (colour; names from ``group_names`` = dataset.json ``group_names``, else the tidy
    table's ``group_name``). Each method's worst group is hatched with a black edge, its
    value written above. Methods without per-group rows (``ltc_random``) are skipped. With a
    single method (e.g. ``zero_shot.csv``) the groups are on the x axis, values written.
    A dataset without groups (ImageNet-A's edit task) gets a note figure saying so.
    """
    rows = report.select_split(metrics_df, split)
    if not rows["metric"].astype(str).str.startswith("acc_group_").any():
        return note_figure(
            "The dataset has no groups (group -1 in its index): no per-group accuracy.", out
        )
    df, methods, gids, names = _group_rows(metrics_df, methods, split, group_names)
    n_m, n_g = len(methods), len(gids)
    single = n_m == 1  # one method: groups on the x axis, named there
    width = 0.7 if single else 0.8 / n_g
    colours = group_colours(n_g)
    if single:
        size = (max(4.0, 1.4 + 1.1 * n_g), 4.2)
    else:
        size = (max(4.5, 2.6 + n_m * (0.17 * n_g + 0.2)), 4.4)
    fig = new_figure(*size, layout="constrained")
    ax = fig.subplots()
    for j, m in enumerate(methods):
        sub = df[df["method"] == m].set_index("gid")
        vals = [float(sub.loc[g, "value"]) if g in sub.index else np.nan for g in gids]
        worst = int(np.nanargmin(vals)) if np.isfinite(vals).any() else -1
        for k, g in enumerate(gids):
            if g not in sub.index:
                continue
            r = sub.loc[g]
            x = k if single else j - 0.4 + width * (k + 0.5)
            v = 100 * float(r["value"])
            yerr = None
            if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
                yerr = [[v - 100 * float(r["ci_low"])], [100 * float(r["ci_high"]) - v]]
            is_worst = k == worst
            ax.bar(
                x,
                v,
                width * 0.92,
                color=colours[k],
                edgecolor="black" if is_worst else "none",
                linewidth=1.6 if is_worst else 0,
                hatch="///" if is_worst else None,
                yerr=yerr,
                error_kw={"elinewidth": 1.0, "capsize": 2, "ecolor": "0.2"},
                zorder=2,
            )
            if is_worst or single:
                top = v + (yerr[1][0] if yerr else 0)
                ax.text(
                    x,
                    top + 1.5,
                    f"{v:.1f}" if single else f"{v:.0f}",
                    ha="center",
                    va="bottom",
                    fontsize=9 if single else 8,
                )
    ticks = (
        [names[g].replace(" on ", "\non ") for g in gids]
        if single
        else [report.method_label(m, labels) for m in methods]
    )
    n_t = len(ticks)
    ax.set_xticks(range(n_t))
    rotate = not single and n_t > 3
    ax.set_xticklabels(ticks, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, n_t - 0.4)
    ax.set_ylim(0, 108)
    ax.set_ylabel("Accuracy (%)")
    ax.set_xlabel("Group (hatched: worst group)" if single else "Method")
    worst_patch = Patch(fc="white", ec="black", hatch="///", label="worst group")
    if not single:
        handles = [Patch(color=colours[k], label=names[g]) for k, g in enumerate(gids)]
        ax.legend(
            handles=[*handles, worst_patch],
            title="Group",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    if single and title is None:
        title = f"{report.method_label(methods[0], labels)}: per-group accuracy (95 % CI)"
    ax.set_title(title or "Per-group accuracy (95 % bootstrap intervals)")
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# LTC vs random heads
# ---------------------------------------------------------------------------------------------


def midrank_percentile(draws: Sequence[float], value: float) -> float:
    """100 * (#{draw < value} + 0.5 #{draw = value}) / n (as the evaluate stage's summary)."""
    x = np.asarray(draws, dtype=np.float64)
    return float(100.0 * (np.sum(x < value) + 0.5 * np.sum(x == value)) / len(x))


@_styled
def random_distribution(
    random_df: pd.DataFrame,
    ltc_value: float,
    zero_shot_value: float | None,
    metric: str = "worst_group_acc",
    *,
    out: str | os.PathLike,
    percentile: float | None = None,
    title: str | None = None,
) -> Figure:
    """Histogram + KDE of the LTC-random draws of ``metric`` (draws.csv), with vertical
    lines at LTC and zero-shot; LTC's percentile among the draws is in the legend
    (``percentile`` from summary.csv, else the mid-rank percentile of the draws)."""
    x = 100 * random_df[metric].to_numpy(dtype=np.float64)
    pct = midrank_percentile(x / 100, ltc_value) if percentile is None else float(percentile)
    fig = new_figure(6.0, 4.3, layout="constrained")
    ax = fig.subplots()
    sns.histplot(
        x=x,
        ax=ax,
        kde=len(x) >= 5 and np.ptp(x) > 0,
        color=PALETTE[0],
        alpha=0.45,
        edgecolor="white",
        label=f"LTC-random draws (n = {len(x)})",
    )
    ax.axvline(
        100 * ltc_value,
        color=LTC_COLOUR,
        lw=2.5,
        label=f"LTC = {100 * ltc_value:.1f} (percentile {pct:.0f})",
    )
    if zero_shot_value is not None and np.isfinite(zero_shot_value):
        ax.axvline(
            100 * zero_shot_value,
            color=ZERO_SHOT_COLOUR,
            lw=2,
            ls="--",
            label=f"Zero-shot = {100 * zero_shot_value:.1f}",
        )
    name = AXIS_LABELS.get(metric, metric)
    ax.set_xlabel(name)
    ax.set_ylabel("Number of draws")
    fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    ax.margins(x=0.08)
    ax.set_title(title or f"LTC vs random heads: {name.split(' (')[0].lower()}")
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# TextSpan descriptions
# ---------------------------------------------------------------------------------------------


@_styled
def textspan_table_figure(
    textspan_df: pd.DataFrame,
    heads: Mapping[str, Any] | Sequence[str],
    out: str | os.PathLike,
    top_k: int = 3,
    title: str | None = None,
) -> Figure:
    """The first ``top_k`` TextSpan descriptions (with variance explained) of each head.

    ``heads``: the ltc.json dict (S heads then Y heads, tagged) or a list of head ids.
    Heads outside the TextSpan layers are listed as "(not described)".
    """
    if isinstance(heads, Mapping):
        s_ids, y_ids = _head_sets(heads)
        entries = [("S", h) for h in s_ids] + [("Y", h) for h in y_ids]
    else:
        entries = [("", str(h)) for h in heads]
    blocks = []
    for tag, hid in entries:
        sub = textspan_df[textspan_df["head_id"] == hid].sort_values("rank").head(top_k)
        lines = [
            f"{int(r['rank'])}. {r['text']}   (VE {100 * float(r['ve']):.1f} %)"
            for _, r in sub.iterrows()
        ] or ["(not described)"]
        blocks.append((tag, hid, lines))
    line_h, gap_h, title_h = 0.26, 0.1, 0.45  # inches
    height = 0.15 + title_h + sum((1 + len(b[2])) * line_h + gap_h for b in blocks)
    longest = max([len(x) for b in blocks for x in b[2]] + [40])
    fig = new_figure(max(5.0, 0.8 + 0.085 * longest), height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, height)  # y in inches from the bottom
    y = height - 0.12
    ax.text(
        0.02,
        y,
        title or "TextSpan descriptions of the located heads",
        fontweight="bold",
        fontsize=12,
        va="top",
    )
    y -= title_h
    for tag, hid, lines in blocks:
        colour = S_COLOUR if tag == "S" else Y_COLOUR if tag == "Y" else "black"
        label = {"S": "spurious (S)", "Y": "salient (Y)"}.get(tag, "")
        ax.text(0.02, y, f"{hid}  {label}".rstrip(), fontweight="bold", color=colour, va="top")
        y -= line_h
        for line in lines:
            ax.text(0.06, y, line, fontsize=10, va="top")
            y -= line_h
        y -= gap_h
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# Dataset samples and training
# ---------------------------------------------------------------------------------------------


def _read_image(path: Path, max_side: int = 256) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        return np.asarray(im)


@_styled
def sample_grid(
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    per_group: int = 6,
    split: str = "test",
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Grid of sample images: one row per group (name from dataset.json, minority groups
    marked), ``per_group`` images drawn with ``numpy.random.default_rng(seed)``. Datasets
    without groups (``group == -1``) get one row per class."""
    root = Path(dataset_dir)
    meta = report.read_json(root / "dataset.json")
    idx = pd.read_parquet(root / "index.parquet")
    idx = idx[idx["split"] == split].sort_values("image_id")
    if idx.empty:
        raise ValueError(f"no images in split {split!r} of {root}")
    if (idx["group"] >= 0).any():
        key = "group"
        names = meta.get("group_names") or []
        minority = set(meta.get("minority_groups") or [])
        ids = sorted(int(g) for g in idx["group"].unique() if g >= 0)

        def row_name(g):
            name = names[g] if g < len(names) else f"group {g}"
            return name + ("\n(minority)" if g in minority else "")
    else:
        key = "label"
        classes = meta.get("classes") or []
        ids = sorted(int(c) for c in idx["label"].unique())

        def row_name(c):
            return classes[c] if c < len(classes) else f"class {c}"

    rng = np.random.default_rng(seed)
    width, height = 1.6 + 1.05 * per_group, 0.55 + 1.1 * len(ids)
    fig = new_figure(width, height)
    axes = fig.subplots(len(ids), per_group, squeeze=False)
    fig.subplots_adjust(
        left=1.5 / width, right=0.99, bottom=0.02, top=1 - 0.5 / height, wspace=0.06, hspace=0.1
    )
    for i, g in enumerate(ids):
        rows = idx[idx[key] == g]
        pick = rows.iloc[np.sort(rng.choice(len(rows), min(per_group, len(rows)), replace=False))]
        for j in range(per_group):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(pick):
                img = _read_image(root / pick.iloc[j]["path"])
                ax.imshow(
                    img, interpolation="nearest" if max(img.shape[:2]) < 96 else "antialiased"
                )
            if j == 0:
                ax.set_ylabel(row_name(g), rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(
        title or f"{meta.get('name', root.name)}: {split} samples per group",
        y=1 - 0.12 / height,
        va="top",
    )
    save_figure(fig, out)
    return fig


@_styled
def training_curve(
    train_log: Mapping[str, Any] | str | os.PathLike,
    out: str | os.PathLike,
    title: str | None = None,
) -> Figure:
    """Mean contrastive training loss per epoch (train_log.json ``epochs``)."""
    logd = train_log if isinstance(train_log, Mapping) else report.read_json(train_log)
    ep = pd.DataFrame(logd["epochs"])
    fig = new_figure(5.2, 3.5, layout="constrained")
    ax = fig.subplots()
    ax.plot(ep["epoch"], ep["loss"], marker="o", color=PALETTE[0], lw=2)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Mean CLIP loss")
    ax.set_xticks(ep["epoch"])
    bits = []
    if "wall_seconds" in logd:
        bits.append(f"{logd['wall_seconds'] / 60:.1f} min")
    if "device" in logd:
        bits.append(str(logd["device"]))
    if "seed" in logd:
        bits.append(f"seed {logd['seed']}")
    ax.set_title(title or "Training loss" + (f" ({', '.join(bits)})" if bits else ""))
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# Planted ground truth
# ---------------------------------------------------------------------------------------------


@_styled
def located_vs_ground_truth(
    ground_truth_df: pd.DataFrame,
    ltc_json: Mapping[str, Any],
    out: str | os.PathLike,
    top_n: int | None = None,
    title: str | None = None,
) -> Figure:
    """Planted ground-truth effect of every head (95 % CI), heads ranked by |effect|;
    located S heads in vermillion, Y heads in blue. The dashed line marks rank |S|;
    precision at |S| (share of S among the |S| top-ranked heads) is in the title.
    ``top_n`` limits the heads shown (default: all up to 48, else 40), always keeping every
    located head. A second title line says in words whether S holds the top ground-truth
    head, misses it, or is empty (LTC selected nothing)."""
    gt = ground_truth_df.sort_values("rank").reset_index(drop=True)
    s_ids, y_ids = _head_sets(ltc_json)
    if top_n is None:
        top_n = len(gt) if len(gt) <= 48 else 40
    pos = {h: i for i, h in enumerate(gt["head_id"])}
    needed = max([pos[h] + 1 for h in s_ids + y_ids if h in pos] + [top_n])
    gt = gt.head(needed)
    fig = new_figure(max(5.0, 1.5 + 0.28 * len(gt)), 4.2, layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="0.5", lw=0.8, zorder=1)
    colours, markers = [], []
    for h in gt["head_id"]:
        if h in s_ids:
            colours.append(S_COLOUR)
            markers.append("s")
        elif h in y_ids:
            colours.append(Y_COLOUR)
            markers.append("D")
        else:
            colours.append("0.55")
            markers.append("o")
    x = np.arange(len(gt))
    eff = gt["effect"].to_numpy(dtype=float)
    lo = eff - gt["ci_low"].to_numpy(dtype=float)
    hi = gt["ci_high"].to_numpy(dtype=float) - eff
    for i in range(len(gt)):
        ax.errorbar(
            x[i],
            eff[i],
            yerr=[[max(lo[i], 0)], [max(hi[i], 0)]],
            fmt=markers[i],
            color=colours[i],
            ms=7 if colours[i] != "0.55" else 5,
            capsize=2,
            zorder=3,
        )
    k = len(s_ids)
    prec = report.precision_at_k(ground_truth_df, s_ids)
    if k:
        ax.axvline(k - 0.5, color="black", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(gt["head_id"], rotation=90, fontsize=8 if len(gt) > 24 else 9)
    ax.set_xlim(-0.7, len(gt) - 0.3)
    ax.set_xlabel("Head (ranked by |ground-truth effect|)")
    ax.set_ylabel("Background effect on class margin")
    handles = [
        Line2D([], [], color=S_COLOUR, marker="s", ls="none", label=f"LTC S ({k})"),
        Line2D([], [], color=Y_COLOUR, marker="D", ls="none", label=f"LTC Y ({len(y_ids)})"),
        Line2D([], [], color="0.55", marker="o", ls="none", label="other heads"),
    ]
    if k:
        handles.append(Line2D([], [], color="black", ls="--", label="rank |S|"))
    ax.legend(handles=handles, loc="best", fontsize=9)
    p = "n/a" if not k else f"{round(prec * k)}/{k} = {prec:.2f}"
    top1 = str(gt["head_id"].iloc[0]) if len(gt) else "(none)"
    if not k:
        verdict = f"LTC selected no spurious head (S is empty); the top ground-truth head is {top1}"
    else:
        verdict = f"S {'holds' if top1 in s_ids else 'misses'} the top ground-truth head {top1}"
    head = title or f"Located heads vs planted ground truth (precision@|S| {p})"
    ax.set_title(f"{head}\n{verdict}")
    save_figure(fig, out)
    return fig


@_styled
def seeds_scatter(
    per_seed: pd.DataFrame,
    out: str | os.PathLike,
    metrics: Sequence[str] = ("worst_group_acc", "avg_acc"),
    title: str | None = None,
) -> Figure:
    """One point per seed per method (%), one panel per metric, methods on the y axis.

    ``per_seed``: tidy rows ``method, metric, value, seed`` (the ``metrics.csv`` of every seed
    with a ``seed`` column). Each seed has its own marker colour, the mean over seeds is a
    black bar, and a dashed line marks zero-shot's mean, so a method that only helps on some
    seeds is visible at a glance.
    """
    df = per_seed[per_seed["metric"].isin(metrics)].copy()
    if df.empty:
        raise ValueError(f"no rows of metrics {list(metrics)}")
    methods = report.ordered_methods(df["method"].tolist())
    seeds = sorted(df["seed"].unique())
    colours = group_colours(len(seeds))
    fig = new_figure(4.2 * len(metrics), 0.9 + 0.36 * len(methods), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    ypos = {m: i for i, m in enumerate(methods)}
    offsets = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else [0.0]
    for ax, metric in zip(axes, metrics, strict=True):
        sub = df[df["metric"] == metric]
        for k, seed in enumerate(seeds):
            s = sub[sub["seed"] == seed]
            ax.scatter(
                100 * s["value"],
                [ypos[m] + offsets[k] for m in s["method"]],
                s=22,
                color=colours[k],
                label=f"seed {seed}",
                zorder=3,
            )
        means = sub.groupby("method")["value"].mean()
        for m, v in means.items():
            ax.plot([100 * v] * 2, [ypos[m] - 0.35, ypos[m] + 0.35], color="black", lw=1.6)
        if "zero_shot" in means:
            ax.axvline(100 * means["zero_shot"], color=ZERO_SHOT_COLOUR, ls="--", lw=1)
        ax.set_xlabel(AXIS_LABELS.get(metric, metric))
    axes[0].set_yticks(range(len(methods)), [report.method_label(m) for m in methods])
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right", fontsize=8, frameon=True)
    if title:
        fig.suptitle(title)
    save_figure(fig, out)
    return fig


#: Colours of the method levels (registry.LEVELS) in :func:`method_plane`.
LEVEL_COLOURS = {
    "reference": ZERO_SHOT_COLOUR,
    "head": PALETTE[3],
    "embedding": PALETTE[0],
    "few_shot": PALETTE[2],
    "composition": PALETTE[4],
}


@_styled
def method_plane(
    metrics_df: pd.DataFrame,
    methods_df: pd.DataFrame,
    out: str | os.PathLike,
    split: str | None = None,
    title: str | None = None,
    window: float = 20.0,
) -> Figure:
    """Every method of a cell on the worst-group vs average accuracy plane (%), with both
    95 % bootstrap intervals as error bars, coloured by level (head-level, embedding-level,
    few-shot, composition; ``methods.csv``). Points carry numbers keyed in the list beside
    the plot (name, worst group, average). Zero-shot's values are dashed lines; the axes show
    ``window`` points below zero-shot and everything above, a method further below sits on
    the border as a triangle pointing out. The oracle upper bound (test attributes) is
    drawn hollow."""
    from clipbias.methods import registry

    df = report.select_split(metrics_df, split)
    info = methods_df.set_index("method")
    wide = df[df["metric"].isin(["worst_group_acc", "avg_acc"])].pivot_table(
        index="method", columns="metric", values=["value", "ci_low", "ci_high"]
    )
    methods = [m for m in report.ordered_methods(df["method"].tolist()) if m in wide.index]
    methods = [
        m for m in methods if m in info.index and np.isfinite(wide.loc[m, ("value", "avg_acc")])
    ]
    if not methods:
        raise ValueError("no method has worst-group and average accuracy rows")
    val = {k: 100 * wide.loc[methods, ("value", k)] for k in ("avg_acc", "worst_group_acc")}
    lo = {k: 100 * wide.loc[methods, ("ci_low", k)] for k in val}
    hi = {k: 100 * wide.loc[methods, ("ci_high", k)] for k in val}
    ref = "zero_shot" if "zero_shot" in methods else methods[0]
    xmin = min(val["avg_acc"][ref] - window, 100.0)
    ymin = min(val["worst_group_acc"][ref] - window, 100.0)
    xmin = max(xmin, float(lo["avg_acc"][val["avg_acc"] >= xmin].min()) - 1.0)
    ymin = max(ymin, float(lo["worst_group_acc"][val["worst_group_acc"] >= ymin].min()) - 1.0)
    xmax = float(hi["avg_acc"].max()) + 1.0
    ymax = float(hi["worst_group_acc"].max()) + 1.0
    fig = new_figure(11.0, 6.0, layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[1.5, 1.0])
    lines = []
    for k, m in enumerate(methods, start=1):
        level = info.loc[m, "level"]
        colour = LEVEL_COLOURS.get(level, "0.5")
        x, y = val["avg_acc"][m], val["worst_group_acc"][m]
        oracle = info.loc[m, "block"] == "oracle_test"
        label = str(info.loc[m, "label"]) if "label" in info.columns else m
        suffix = " (oracle)" if oracle and "oracle" not in label.lower() else ""
        lines.append((k, label + suffix, y, x, colour))
        if x < xmin or y < ymin:  # off the window: a triangle on the border
            cx, cy = max(x, xmin), max(y, ymin)
            marker = "<" if x < xmin and y >= ymin else ("v" if y < ymin and x >= xmin else "v")
            ax.plot(cx, cy, marker=marker, color=colour, ms=8, clip_on=False, zorder=3)
            ax.annotate(str(k), (cx, cy), xytext=(5, 5), textcoords="offset points",
                        fontsize=8, color=colour)  # fmt: skip
            continue
        ax.errorbar(
            x, y,
            xerr=[[x - lo["avg_acc"][m]], [hi["avg_acc"][m] - x]],
            yerr=[[y - lo["worst_group_acc"][m]], [hi["worst_group_acc"][m] - y]],
            fmt="o", color=colour, ms=6, lw=0.8, capsize=2,
            mfc="white" if oracle else colour, zorder=3,
        )  # fmt: skip
        ax.annotate(str(k), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8,
                    color=colour, fontweight="bold")  # fmt: skip
    ax.axvline(val["avg_acc"][ref], color=ZERO_SHOT_COLOUR, ls="--", lw=0.8)
    ax.axhline(val["worst_group_acc"][ref], color=ZERO_SHOT_COLOUR, ls="--", lw=0.8)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    levels = [lv for lv in LEVEL_COLOURS if lv in set(info.loc[methods, "level"])]
    ax.legend(
        handles=[Line2D([], [], color=LEVEL_COLOURS[lv], marker="o", ls="none",
                        label=registry.LEVELS[lv]) for lv in levels],
        loc="lower right", fontsize=8, frameon=True,
    )  # fmt: skip
    ax.set_xlabel(AXIS_LABELS.get("avg_acc", "Average accuracy (%)"))
    ax.set_ylabel(AXIS_LABELS.get("worst_group_acc", "Worst-group accuracy (%)"))
    side.axis("off")
    side.text(0.0, 1.0, "#  method: worst group / average (%)", fontsize=8, fontweight="bold",
              va="top", transform=side.transAxes)  # fmt: skip
    step = min(0.045, 0.95 / max(len(lines), 1))
    for i, (k, label, y, x, colour) in enumerate(lines, start=1):
        side.text(0.0, 1.0 - step * i, f"{k:>2}  {label}: {y:.1f} / {x:.1f}", fontsize=7.5,
                  color=colour, va="top", transform=side.transAxes)  # fmt: skip
    fig.suptitle(title or "Worst-group vs average accuracy (95 % intervals)")
    save_figure(fig, out)
    return fig


@_styled
def note_figure(text: str, out: str | os.PathLike) -> Figure:
    """A small figure that states why a figure of the report has no data (e.g. the method it
    shows is not configured), so the report's file list stays the same for every config."""
    fig = new_figure(5.0, 1.2)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# Fairness audit (METHODS §6; tables of clipbias.stages.audit, read by clipbias.audit_report)
# ---------------------------------------------------------------------------------------------


def _panel_grid(fig: Figure, n: int, max_cols: int = 2):
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


@_styled
def audit_random_control(
    draws_df: pd.DataFrame,
    controls: Mapping[str, Mapping[str, Any]],
    *,
    out: str | os.PathLike,
    set_name: str = "top_k",
    title: str | None = None,
) -> Figure:
    """Cramér's V before and after ablating the selected heads, on the distribution of V after
    ablating layer-matched random head sets (METHODS §6.9). One panel per attribute.

    ``draws_df``: ``random_draws.csv`` rows of one variant (``attribute, set, v, ...``);
    ``controls``: {attribute: random-control summary of ``set_name``} (audit.json
    ``random_control[set_name]``: ``v_before``, ``v_selected``, ``frac_beaten``, ``p_value``).
    """
    attrs = [a for a in controls if controls[a]]
    if not attrs:
        raise ValueError("no random-control summary to plot")
    fig = new_figure(6.0 * min(len(attrs), 2), 4.4 * int(np.ceil(len(attrs) / 2)) + 0.4,
                     layout="constrained")  # fmt: skip
    for ax, attr in zip(_panel_grid(fig, len(attrs)), attrs, strict=True):
        c = controls[attr]
        d = draws_df[(draws_df["attribute"] == attr) & (draws_df["set"] == set_name)]
        x = d["v"].to_numpy(dtype=np.float64)
        if len(x):
            sns.histplot(
                x=x,
                ax=ax,
                kde=len(x) >= 5 and np.ptp(x) > 0,
                color=PALETTE[0],
                alpha=0.45,
                edgecolor="white",
                label=f"random layer-matched sets (n = {len(x)})",
            )
        else:  # a layer holds more than half of its heads in the selected set
            ax.text(0.5, 0.85, "no layer-matched random set exists", transform=ax.transAxes,
                    ha="center", va="center", color="0.3")  # fmt: skip
        beaten = c.get("frac_beaten")
        extra = (
            ""
            if beaten is None
            else f"; beats {100 * beaten:.0f} % of sets, p {report.p_phrase(c['p_value'], c.get('n_sets'))}"
        )
        ax.axvline(c["v_selected"], color=LTC_COLOUR, lw=2.5,
                   label=f"selected heads: V = {c['v_selected']:.3f}{extra}")  # fmt: skip
        ax.axvline(c["v_before"], color=ZERO_SHOT_COLOUR, lw=2, ls="--",
                   label=f"before ablation: V = {c['v_before']:.3f}")  # fmt: skip
        ax.set_xlabel("Cramér's V(predicted class, attribute) after ablation")
        ax.set_ylabel("Number of random sets")
        ax.set_title(f"{attr}: {', '.join(c.get('selected', []))}", fontsize=11)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, fontsize=8)
        ax.margins(x=0.1)
    fig.suptitle(title or "Selected heads vs layer-matched random heads")
    save_figure(fig, out)
    return fig


@_styled
def audit_cav_heatmap(
    scores_df: pd.DataFrame,
    selections: Mapping[str, Mapping[str, Any]],
    layers: Sequence[int],
    n_heads: int,
    *,
    out: str | os.PathLike,
    value: str = "d_within",
    title: str | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Layers x heads heatmap of the per-head CAV effect (METHODS §6.4), one panel per
    attribute: the signed standardised mean difference of the ranking CAV's projections
    (``value`` = ``d_within``, falling back to ``d`` when no class qualifies), diverging
    colours centred at 0. Top-k heads get a solid box ("K"), greedy heads a dashed one ("G").

    ``scores_df``: ``head_scores.csv`` rows of one variant; ``selections``: {attribute:
    audit.json ``selection``} (``rank_cav``, ``top_k``, ``greedy``).
    """
    attrs = list(selections)
    if not attrs:
        raise ValueError("no attribute to plot")
    layers = [int(x) for x in layers]
    mats, labels = [], []
    for attr in attrs:
        sc = scores_df[(scores_df["attribute"] == attr)
                       & (scores_df["cav"] == selections[attr]["rank_cav"])]  # fmt: skip
        col = value if sc[value].notna().any() else "d"
        mats.append(_head_matrix(sc, layers, n_heads, col))
        labels.append(f"{attr}: {'within-class d' if col == 'd_within' else 'd'} "
                      f"({selections[attr]['rank_cav']})")  # fmt: skip
    vmax = max(float(np.nanmax(np.abs(m.to_numpy()))) if np.isfinite(m.to_numpy()).any() else 0
               for m in mats) or 1.0  # fmt: skip
    if annotate is None:
        annotate = len(layers) * n_heads <= 100
    w = max(3.8, 0.45 * n_heads + 1.8)
    h = max(2.8, 0.3 * len(layers) + 1.4)
    fig = new_figure(w * len(attrs) + 0.4, h + 0.7, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(attrs), squeeze=False).ravel())
    for ax, attr, mat, label in zip(axes, attrs, mats, labels, strict=True):
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad (mpl >= 3.10)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(mat, ax=ax, cmap=DIVERGING_CMAP, vmin=-vmax, vmax=vmax, center=0.0,
                        annot=annotate, fmt=".2f", annot_kws={"fontsize": 7}, linewidths=0.3,
                        linecolor="white", cbar_kws={"label": "standardised mean difference",
                                                     "shrink": 0.9})  # fmt: skip
        sel = selections[attr]
        row = {lyr: i for i, lyr in enumerate(layers)}
        for ids, tag, ls, lw in ((sel.get("top_k", []), "K", "-", 2.2),
                                 (sel.get("greedy", []), "G", "--", 1.6)):  # fmt: skip
            for hid in ids:
                lyr, hh = (int(x) for x in hid[1:].split("H"))
                if lyr not in row:
                    continue
                i = row[lyr]
                ax.add_patch(Rectangle((hh, i), 1, 1, fill=False, ec="white", lw=lw + 2, zorder=3))
                ax.add_patch(Rectangle((hh, i), 1, 1, fill=False, ec="black", lw=lw, ls=ls,
                                       zorder=3))  # fmt: skip
                ax.text(hh + 0.92 if tag == "G" else hh + 0.08, i + 0.1, tag, fontsize=7,
                        fontweight="bold", ha="right" if tag == "G" else "left", va="top",
                        zorder=4)  # fmt: skip
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("Head")
        ax.set_ylabel("Layer")
        ax.tick_params(axis="y", rotation=0)
    handles = [Patch(fc="white", ec="black", lw=2, ls="-", label="K: top-k heads"),
               Patch(fc="white", ec="black", lw=1.5, ls="--", label="G: greedy set")]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(title or "Per-head zero-shot CAV scores")
    save_figure(fig, out)
    return fig


TRANSITION_COLOURS = {
    "wrong_to_right": PALETTE[2],  # green
    "right_to_wrong": PALETTE[3],  # vermillion
    "wrong_to_other_wrong": "0.6",
}
TRANSITION_LABELS = {
    "wrong_to_right": "wrong → right",
    "right_to_wrong": "right → wrong",
    "wrong_to_other_wrong": "wrong → other wrong",
}


@_styled
def audit_transitions(
    transitions_df: pd.DataFrame,
    *,
    out: str | os.PathLike,
    condition: str = "top_k",
    max_classes: int = 10,
    title: str | None = None,
) -> Figure:
    """Prediction transitions after ablation (METHODS §6.10), one panel per attribute:
    stacked horizontal bars of wrong→right, right→wrong and wrong→other-wrong counts for the
    most stereotyped classes (else the classes with most changes) and the totals, with the
    share of changed predictions that land on the true class.

    ``transitions_df``: ``transitions.csv`` rows of one variant (``attribute, condition,
    class_index, class_name, stereotyped, ...``)."""
    from clipbias.audit_report import transition_rows

    df = transitions_df[transitions_df["condition"] == condition]
    attrs = list(dict.fromkeys(df["attribute"]))
    if not attrs:
        raise ValueError(f"no transitions of condition {condition!r}")
    parts = {a: transition_rows(df[df["attribute"] == a], max_classes) for a in attrs}
    n_rows = max(len(p) for p in parts.values())
    fig = new_figure(6.4 * len(attrs), 0.38 * n_rows + 1.9, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(attrs), squeeze=False).ravel())
    for ax, attr in zip(axes, attrs, strict=True):
        p = parts[attr].iloc[::-1].reset_index(drop=True)
        names = [n if i >= 0 else f"({n})" for n, i in zip(p["class_name"], p["class_index"],
                                                           strict=True)]  # fmt: skip
        left = np.zeros(len(p))
        for key, colour in TRANSITION_COLOURS.items():
            vals = p[key].to_numpy(dtype=np.float64)
            ax.barh(np.arange(len(p)), vals, left=left, color=colour, label=TRANSITION_LABELS[key],
                    edgecolor="white", height=0.7)  # fmt: skip
            left += vals
        for y, (tot, share) in enumerate(zip(left, p["share_changed_to_true"], strict=True)):
            if np.isfinite(share):
                ax.text(tot, y, f"  {100 * share:.0f} % to true", va="center", fontsize=8)
        ax.set_yticks(np.arange(len(p)), names)
        ax.set_xlabel("Images whose prediction changed")
        ax.set_title(attr, fontsize=11)
        ax.set_xlim(0, 1.35 * max(float(left.max()), 1.0))  # room for the share labels
    handles = [Patch(fc=c, label=TRANSITION_LABELS[k]) for k, c in TRANSITION_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(title or "Prediction transitions after ablating the selected heads")
    save_figure(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# RefineCLIP (notebooks/report_refineclip.ipynb)
# ---------------------------------------------------------------------------------------------

SCORE_STYLES = {"A": "-", "B": "--", "C": "-", "D": "--"}


@_styled
def utility_vs_t(
    phase1: Mapping[str, Any], out: str | os.PathLike, title: str | None = None
) -> Figure:
    """Utility U(S_t) (eq. 10) of every candidate list (scores A-D) against t, one panel per
    error direction of a RefineCLIP phase-1 file; the dotted line is U without ablation, the
    star the selected S* (utility selection, or the list and t chosen on validation)."""
    dirs = list(phase1.get("directions", []))
    if not dirs:
        return note_figure("No misclassified shot: phase 1 found nothing to edit.", out)
    sel = phase1.get("selected") or {}
    colours = {s: c for s, c in zip("ABCD", group_colours(4), strict=True)}
    fig = new_figure(4.6 * len(dirs), 3.6, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(dirs), sharey=True))
    for ax, d in zip(axes, dirs, strict=True):
        for item in d["lists"]:
            u = np.asarray(item["utility"], dtype=float)
            t = np.arange(1, len(u) + 1)
            s = item["score"]
            ax.plot(t, u, SCORE_STYLES[s], marker="o", ms=3, color=colours[s])
            if sel.get("direction") == d["key"] and sel.get("score") == s and sel.get("t"):
                k = int(sel["t"])
                ax.plot(k, u[k - 1], "*", ms=15, color="black", zorder=4)
        ax.axhline(phase1.get("utility_no_ablation", np.nan), color="0.4", ls=":", lw=1.2)
        name = f"{d.get('true_name') or d['true_label']} → {d.get('pred_name') or d['pred_label']}"
        ax.set_title(f"{name} (|W| = {d['n_wrong']})", fontsize=11)
        ax.set_xlabel("t (heads ablated)")
        skipped = ", ".join(f"({k}) skipped" for k in d.get("skipped", {}))
        if skipped:
            ax.text(0.02, 0.02, skipped, transform=ax.transAxes, fontsize=8, color="0.3")
    axes[0].set_ylabel("Utility U(S_t)")
    shown = sorted({item["score"] for d in dirs for item in d["lists"]})
    handles = [
        Line2D([], [], color=colours[s], ls=SCORE_STYLES[s], marker="o", ms=3, label=f"({s})")
        for s in shown
    ]
    if sel.get("t"):
        handles.append(Line2D([], [], color="black", marker="*", ms=12, ls="none", label="S*"))
    handles.append(Line2D([], [], color="0.4", ls=":", label="no ablation"))
    axes[-1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(title or f"RefineCLIP phase 1: utility of the candidate lists "
                 f"(selection: {phase1.get('selection', 'utility')})")  # fmt: skip
    save_figure(fig, out)
    return fig


def _acc_curve(curves: pd.DataFrame, set_name: str, metric: str = "acc") -> pd.Series:
    sub = curves[(curves["set"] == set_name) & (curves["metric"] == metric)]
    return sub.set_index("step")["value"].sort_index()


@_styled
def edit_success_vs_locality(
    curves: Mapping[str, pd.DataFrame],
    out: str | os.PathLike,
    labels: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Phase-2 training curves of every adapter method (``{method}_curves.csv``): left,
    accuracy (%) on the target classes (edit success, solid) and the other classes (locality,
    dashed) per training step; right, edit success against locality along training (circle =
    start, square = end). Without edit targets both panels use the whole test split."""
    curves = {m: c for m, c in curves.items() if len(c)}
    if not curves:
        return note_figure("No RefineCLIP phase-2 method configured.", out)
    has_targets = all("target" in set(c["set"]) for c in curves.values())
    colours = dict(zip(curves, group_colours(len(curves)), strict=True))
    fig = new_figure(10.0, 4.0 + 0.18 * len(curves), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for m, c in curves.items():
        lab = (labels or {}).get(m, m)
        if has_targets:
            succ, loc = _acc_curve(c, "target"), _acc_curve(c, "other")
            ax1.plot(succ.index, 100 * succ, color=colours[m], lw=2, label=f"{lab}: target")
            ax1.plot(loc.index, 100 * loc, color=colours[m], lw=1.5, ls="--", label=f"{lab}: other")
            x, y = 100 * loc.to_numpy(), 100 * succ.to_numpy()
        else:
            test, train = _acc_curve(c, "test"), _acc_curve(c, "train")
            ax1.plot(test.index, 100 * test, color=colours[m], lw=2, label=f"{lab}: test")
            ax1.plot(
                train.index, 100 * train, color=colours[m], lw=1.5, ls=":", label=f"{lab}: shots"
            )
            x = 100 * _acc_curve(c, "test", "class_avg_acc").to_numpy()
            y = 100 * test.to_numpy()
        ax2.plot(x, y, color=colours[m], lw=1.5, marker=".", ms=3)
        ax2.plot(x[:1], y[:1], "o", color=colours[m], ms=7)
        ax2.plot(x[-1:], y[-1:], "s", color=colours[m], ms=7)
    ax1.set_xlabel("Training step")
    ax1.set_ylabel("Accuracy (%)")
    handles, texts = ax1.get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncol=2, fontsize=8)
    if has_targets:
        ax2.set_xlabel("Locality: accuracy on other classes (%)")
        ax2.set_ylabel("Edit success: target accuracy (%)")
    else:
        ax2.set_xlabel("Class-averaged test accuracy (%)")
        ax2.set_ylabel("Test accuracy (%)")
    fig.suptitle(title or "RefineCLIP phase 2: edit success vs locality during training")
    save_figure(fig, out)
    return fig


@_styled
def alpha_beta_sensitivity(
    sensitivity: pd.DataFrame | None, out: str | os.PathLike, title: str | None = None
) -> Figure:
    """α/β sensitivity (``refineclip_sensitivity.csv``): one panel per sweep (α with β = 0, β
    with α = 0, α = β), accuracy (%) per step on the target classes (solid) and the other
    classes (dashed) for every value (colour); α = β = 0 (STD-FT) in grey in every panel.
    Without edit targets: the whole test split."""
    if sensitivity is None or sensitivity.empty:
        return note_figure("No refineclip_adapt* method configured: no sensitivity study.", out)
    df = sensitivity[sensitivity["metric"] == "acc"]
    has_targets = "target" in set(df["set"])
    sets = [("target", "-"), ("other", "--")] if has_targets else [("test", "-")]
    sweeps = [s for s in ("alpha", "beta", "both") if s in set(df["sweep"])]
    values = sorted({float(v) for s in sweeps for v in df.loc[df["sweep"] == s, "alpha"]}
                    | {float(v) for v in df.loc[df["sweep"] == "beta", "beta"]})  # fmt: skip
    values = [v for v in values if v > 0]
    colours = dict(zip(values, sns.color_palette("viridis", len(values)), strict=True))
    fig = new_figure(4.4 * max(1, len(sweeps)), 3.7, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(sweeps)), sharey=True))
    base = df[df["sweep"] == "none"]
    names = {"alpha": "α swept, β = 0", "beta": "β swept, α = 0", "both": "α = β swept"}
    for ax, sweep in zip(axes, sweeps, strict=False):
        sub = df[df["sweep"] == sweep]
        for set_name, ls in sets:
            b = base[base["set"] == set_name].sort_values("step")
            ax.plot(b["step"], 100 * b["value"], color="0.5", ls=ls, lw=1.5)
            for v in values:
                key = "beta" if sweep == "beta" else "alpha"
                c = sub[(sub[key] == v) & (sub["set"] == set_name)].sort_values("step")
                ax.plot(c["step"], 100 * c["value"], color=colours[v], ls=ls, lw=1.6)
        ax.set_title(names[sweep], fontsize=11)
        ax.set_xlabel("Training step")
    axes[0].set_ylabel("Accuracy (%)")
    handles = [Line2D([], [], color=colours[v], lw=2, label=f"{v:g}") for v in values]
    handles.append(Line2D([], [], color="0.5", lw=2, label="α = β = 0 (STD-FT)"))
    for set_name, ls in sets:
        handles.append(Line2D([], [], color="black", ls=ls, label=set_name))
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title or "RefineCLIP phase 2: sensitivity to α and β")
    save_figure(fig, out)
    return fig
