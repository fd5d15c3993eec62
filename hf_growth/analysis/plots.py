"""Matplotlib figures (headless ``Agg``) for the analysis results; each function writes one PNG and returns its path."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kwargs):  # noqa: N802 (matplotlib's name)
    from matplotlib.ticker import MaxNLocator as locator

    return locator(**kwargs)


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _named(results: Any, is_single) -> dict[str, Any]:
    if is_single(results):
        return {"model": results}
    return dict(results)


def plot_layer_entropy(
    entropies: Mapping[str, Sequence[float]] | Sequence[float], path: str | Path, *, title: str | None = None
) -> Path:
    """Matrix entropy vs layer, one line per model (``{"baseline": e1, "Seq-VCR": e2}`` or one list).

    Values from ``layer_entropy`` also carry ``.raw``: then a second panel shows the raw entropy in nats.

    >>> plot_layer_entropy({"a": [0.9, 0.5, 0.2], "b": [0.9, 0.8, 0.7]}, "/tmp/entropy.png")  # doctest: +SKIP
    """
    plt = _pyplot()
    named = _named(entropies, lambda r: not isinstance(r, Mapping))
    has_raw = all(
        getattr(v, "raw", None) is not None or (isinstance(v, Mapping) and "raw" in v) for v in named.values()
    )
    fig, axes = plt.subplots(1, 2 if has_raw else 1, figsize=(11 if has_raw else 6.5, 4.2), squeeze=False)
    for name, values in named.items():
        normalised = values["normalized"] if isinstance(values, Mapping) else list(values)
        layers = np.arange(len(normalised))
        axes[0, 0].plot(layers, normalised, marker="o", markersize=3.5, label=name)
        if has_raw:
            raw = values["raw"] if isinstance(values, Mapping) else values.raw
            axes[0, 1].plot(layers, raw, marker="o", markersize=3.5, label=name)
    axes[0, 0].set_ylabel("normalised matrix entropy  S / log(min(T, d))")
    axes[0, 0].set_ylim(0, 1.02)
    if has_raw:
        axes[0, 1].set_ylabel("matrix entropy S (nats)")
    for ax in axes[0]:
        ax.set_xlabel("layer (0 = embedding output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "Representation entropy per layer (lower = more collapsed)")
    fig.tight_layout()
    return _save(fig, path)


_PANELS = (
    ("value_cos_to_first", "cos(V_l, V_0)", "Cosine similarity of values to layer 0"),
    ("attention_entropy", "entropy of token importance (nats)", "Attention concentration (lower = concentrated)"),
    ("first_token_attention", "mean attention to first token", "First-token attention share (sink)"),
    ("first_token_value_norm", "‖v‖", "Value norm: first token vs others"),
    ("first_token_hidden_norm", "‖h‖ (log scale)", "Hidden-state norm entering layer: first vs others"),
)


def plot_value_statistics(statistics: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Six panels per layer: value cosine to layer 0, attention entropy, first-token share, value and hidden
    norms (first token solid, mean of the others dashed), and ResFormer's λ. ``statistics`` is one
    ``value_statistics`` result or ``{name: result}`` to compare models.

    >>> plot_value_statistics(value_statistics(model, batch), "/tmp/values.png")  # doctest: +SKIP
    """
    plt = _pyplot()
    named = _named(statistics, lambda r: "layers" in r)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    axes = axes.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, stats) in enumerate(named.items()):
        colour = colours[index % len(colours)]
        layers = stats["layers"]
        for ax, (key, ylabel, panel_title) in zip(axes, _PANELS):
            ax.plot(
                layers,
                stats[key],
                marker="o",
                markersize=3,
                color=colour,
                label=f"{name}: first token" if key.startswith("first_token_") and "norm" in key else name,
            )
            if key == "first_token_value_norm":
                ax.plot(layers, stats["value_norm_rest"], ls="--", color=colour, label=f"{name}: other tokens")
            if key == "first_token_hidden_norm":
                ax.plot(layers, stats["hidden_norm_rest"], ls="--", color=colour, label=f"{name}: other tokens")
                ax.set_yscale("log")
            ax.set_title(panel_title, fontsize=10)
            ax.set_ylabel(ylabel)
        _plot_lambdas(axes[5], name, stats.get("lambdas") or {}, colour)
    for ax in axes[:5]:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylim(min(-0.05, axes[0].get_ylim()[0]), 1.05)
    axes[2].set_ylim(0, 1.02)
    ax = axes[5]
    ax.set_title("Value-residual λ (ResFormer)", fontsize=10)
    if not any(stats.get("lambdas") for stats in named.values()):
        ax.text(
            0.5,
            0.5,
            "no value-residual λ\n(not a learnable ResFormer)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=10,
            color="0.4",
        )
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel("layer")
        ax.set_ylabel("λ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    sequences = ", ".join(f"{n}: {s.get('num_sequences', '?')}" for n, s in named.items())
    fig.suptitle(title or f"Value residual statistics per layer (sequences averaged — {sequences})")
    fig.tight_layout()
    return _save(fig, path)


def _plot_lambdas(ax, name: str, lambdas: Mapping[str, Sequence[float]], colour) -> None:
    """One line per parameter kind (``lambda_first``, ``lambda_own``, ...) over the layers its name carries;
    parameters without a layer index (e.g. a model-level scale) are drawn against their element index."""
    series: dict[str, dict[int, float]] = {}
    loose: dict[str, Sequence[float]] = {}
    for param, values in lambdas.items():
        match = re.search(r"(?:layers|h)\.(\d+)\.", param)
        if not match:
            loose[param] = values
            continue
        short = param.rsplit(".", 1)[-1]
        for k, value in enumerate(values):
            series.setdefault(short if len(values) == 1 else f"{short}[{k}]", {})[int(match.group(1))] = value
    styles = ["-", "--", ":", "-."]
    for k, (short, points) in enumerate(sorted(series.items())):
        layers = sorted(points)
        ax.plot(
            layers,
            [points[layer] for layer in layers],
            marker="o",
            markersize=3,
            color=colour,
            ls=styles[k % 4],
            label=f"{name}: {short}",
        )
    for k, (param, values) in enumerate(loose.items()):
        ax.plot(
            range(len(values)),
            list(values),
            marker="s",
            markersize=3,
            color=colour,
            ls=styles[(k + 1) % 4],
            label=f"{name}: {param} (by index)",
        )


def plot_head_emergence(
    record: Any,
    path: str | Path,
    *,
    max_steps: int = 5,
    max_maps: int = 6,
    top: int = 6,
    threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Head emergence in one figure: a grid of stored attention maps (rows = recorded steps, columns = the
    stored heads with the highest final score), the per-head score curves over training (the ``top`` heads
    coloured, with the step at which each first reaches ``threshold``, by default the step at which it has
    covered half of its rise), and the final score of every head.

    ``record``: a ``HeadEmergenceCallback`` or its ``to_dict()`` (e.g. loaded from the JSON it saved).

    >>> plot_head_emergence(callback, "/tmp/heads.png")  # doctest: +SKIP
    """
    from .heads import as_record

    plt = _pyplot()
    data = as_record(record)
    steps = list(data["steps"])
    scores = data["scores"]  # (S, L, H)
    if not steps:
        raise ValueError("nothing recorded yet")
    num_layers, num_heads = scores.shape[1:]
    final = scores[-1]

    maps = data["maps"]
    map_layers, map_heads = data.get("map_layers") or [], data.get("map_heads") or []
    pairs = [(i, j) for i in range(len(map_layers)) for j in range(len(map_heads))] if maps else []
    pairs.sort(key=lambda ij: -final[map_layers[ij[0]], map_heads[ij[1]]])
    pairs = pairs[:max_maps]
    step_rows = sorted(set(np.linspace(0, len(steps) - 1, min(max_steps, len(steps))).round().astype(int)))
    tokens = int(data.get("map_tokens") or (maps[0].shape[-1] if maps else 0))

    n_cols = max(len(pairs), 3)
    map_rows = len(step_rows) if pairs else 0
    fig = plt.figure(figsize=(2.1 * n_cols + 1.0, 2.1 * map_rows + 4.2))
    grid = fig.add_gridspec(
        map_rows + 1,
        n_cols + 1,
        height_ratios=[1] * map_rows + [1.9],
        width_ratios=[1] * n_cols + [0.06],
        hspace=0.45,
        wspace=0.25,
    )
    image = None
    for r, s in enumerate(step_rows if pairs else []):
        for c, (i, j) in enumerate(pairs):
            ax = fig.add_subplot(grid[r, c])
            image = ax.imshow(maps[s][i, j][:tokens, :tokens], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(
                    f"L{map_layers[i]} H{map_heads[j]}\nfinal score {final[map_layers[i], map_heads[j]]:.2f}",
                    fontsize=9,
                )
            if c == 0:
                ax.set_ylabel(f"step {steps[s]}\nquery pos.", fontsize=9)
            else:
                ax.set_yticks([])
            if r == len(step_rows) - 1:
                ax.set_xlabel("key position", fontsize=9)
            else:
                ax.set_xticks([])
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            if r == len(step_rows) - 1:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    if image is not None:
        cax = fig.add_subplot(grid[:map_rows, n_cols])
        fig.colorbar(image, cax=cax, label="attention weight")

    if len(steps) > 1:
        split = max(1, (n_cols * 3) // 5)
        _score_curves(fig.add_subplot(grid[map_rows, :split]), scores, steps, final, top, threshold, split)
        heat = fig.add_subplot(grid[map_rows, split + (1 if split < n_cols - 1 else 0) : n_cols])
    else:  # a single checkpoint: no curves, the per-head scores take the whole row
        heat = fig.add_subplot(grid[map_rows, :n_cols])
    im = heat.imshow(final, cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    heat.set_title(f"Score per head at step {steps[-1]}", fontsize=10)
    heat.set_xlabel("head")
    heat.set_ylabel("layer")
    heat.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(num_heads, 16)))
    heat.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(num_layers, 12)))
    if num_layers * num_heads <= 64:  # numbers only where they stay legible
        for layer in range(num_layers):
            for head in range(num_heads):
                heat.text(
                    head,
                    layer,
                    f"{final[layer, head]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if final[layer, head] < 0.6 else "k",
                )
    fig.colorbar(im, ax=heat, fraction=0.08, pad=0.03, label="score")
    fig.suptitle(title or "Attention-head emergence on a fixed probe batch", fontsize=12)
    return _save(fig, path)


def _score_curves(curves, scores, steps, final, top, threshold, split) -> None:
    from .heads import first_reach

    num_layers, num_heads = scores.shape[1:]
    order = [int(x) for x in np.argsort(-final.ravel())[:top]]
    emerge = first_reach(scores, steps, threshold)
    for flat in range(num_layers * num_heads):
        layer, head = divmod(flat, num_heads)
        if flat not in order:
            curves.plot(steps, scores[:, layer, head], color="0.75", lw=0.8, zorder=1)
    for flat in order:
        layer, head = divmod(flat, num_heads)
        when = emerge[layer][head]
        if threshold is None:
            label = f"L{layer} H{head}: " + (f"half-rise at step {when}" if when is not None else "no rise")
        else:
            label = f"L{layer} H{head}: " + (
                f"≥{threshold:g} at step {when}" if when is not None else f"< {threshold:g}"
            )
        curves.plot(steps, scores[:, layer, head], marker="o", markersize=3, lw=1.6, zorder=2, label=label)
    if threshold is not None:
        curves.axhline(threshold, color="k", ls=":", lw=0.8)
    curves.set_xlabel("training step")
    curves.set_ylabel("attention mass on the\npositions that matter")
    curves.set_title(f"Per-head score over training (top {len(order)} coloured, others grey)", fontsize=10)
    curves.set_ylim(0, 1.02)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.grid(alpha=0.3)
    curves.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0) if split < 3 else None)


__all__ = ["plot_head_emergence", "plot_layer_entropy", "plot_value_statistics"]
