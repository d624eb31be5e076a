"""Pictures of the neuron-symmetry graph (``nfncompile trace --draw``).

Runs of neurons are laid out left to right by depth, coloured by the space they belong to;
grey arrows are the parameters that join runs (from the runs a parameter reads to the one it
produces), dashed lines the ties that make runs move together.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .spaces import derive_spaces

__all__ = ["draw_symmetry_graph"]


def draw_symmetry_graph(graph_or_result: Any, path: str | None = None) -> Any:
    """Draw the symmetry graph with matplotlib, runs coloured by the space they belong to.

    Parameters
    ----------
    graph_or_result : networkx.Graph or Derivation or TraceReport
        The graph from :func:`~nfncompile.frontend.graph.build_symmetry_graph`, or a record
        holding it (a :class:`~nfncompile.frontend.derivation.Derivation` or a
        :class:`~nfncompile.frontend.report.TraceReport`: its ``run_space`` colours the runs).
    path : str, optional
        Where to save the figure (png, svg, pdf); the figure is returned either way.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = draw_symmetry_graph(g, "graph.png")  # doctest: +SKIP
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    obj = graph_or_result
    graph = obj if isinstance(obj, nx.Graph) else obj.graph
    run_space = derive_spaces(graph).run_space if isinstance(obj, nx.Graph) else obj.run_space
    runs = sorted((n for n in graph.nodes if n[0] == "run"), key=lambda n: n[1])
    # Structure: a param joins the runs indexing its axes; the newest of them is the one
    # it produces (axis order differs: Linear [out, in], ConvTranspose [in, out, ...]).
    readers: dict = {}
    for u, v, d in graph.edges(data=True):
        if d.get("kind") == "index":
            pn, rn = (u, v) if u[0] == "param" else (v, u)
            readers.setdefault(pn[1], set()).add(rn)
    weights = nx.DiGraph()
    weights.add_nodes_from(runs)
    for rs in readers.values():
        out = max(rs, key=lambda n: n[1])
        weights.add_edges_from((a, out) for a in rs if a != out)
    ties = {
        tuple(sorted((u, v), key=lambda n: n[1]))
        for u, v, d in graph.edges(data=True)
        if d.get("kind") == "tie" and u != v
    }
    order = nx.DiGraph(weights)
    order.add_edges_from(ties)  # creation order: lower run id first
    if not nx.is_directed_acyclic_graph(order):
        order = nx.DiGraph(weights)
    depth: dict = {}
    for n in nx.topological_sort(order) if nx.is_directed_acyclic_graph(order) else runs:
        depth[n] = max((depth[p] + 1 for p in order.predecessors(n) if p in depth), default=0)
    layers: dict = {}
    for n in runs:
        layers.setdefault(depth[n], []).append(n)
    pos = {n: (d, -i + (len(ns) - 1) / 2) for d, ns in layers.items() for i, n in enumerate(ns)}
    names = sorted({run_space.get(n[1], "fixed") for n in runs})
    cmap = plt.get_cmap("tab20")
    colour = {s: cmap(i % 20) for i, s in enumerate(n for n in names if n != "fixed")}
    colour["fixed"] = (0.75, 0.75, 0.75, 1.0)
    width = max(8.0, 1.1 * len(layers) + 2)
    height = max(3.5, 0.8 * max(len(ns) for ns in layers.values()) + 2)
    fig, ax = plt.subplots(figsize=(width, height))
    for skip in (False, True):  # edges that skip layers (concat, shortcuts) are curved
        edges = [(a, b) for a, b in weights.edges if (depth[b] - depth[a] > 1) == skip]
        nx.draw_networkx_edges(
            weights, pos, edgelist=edges, ax=ax, edge_color="0.6", arrows=True, arrowsize=10,
            node_size=420, connectionstyle=f"arc3,rad={-0.25 if skip else 0.0}",
        )  # fmt: skip
    tie_graph = nx.Graph(list(ties))
    nx.draw_networkx_edges(
        tie_graph, pos, ax=ax, style="dashed", width=1.8, edge_color="black",
        connectionstyle="arc3,rad=0.35", arrows=True, arrowstyle="-", node_size=420,
    )  # fmt: skip
    nx.draw_networkx_nodes(
        weights, pos, ax=ax, node_size=420,
        node_color=[colour[run_space.get(n[1], "fixed")] for n in weights.nodes],
    )  # fmt: skip
    for n, (x, y) in pos.items():
        label = f"{graph.nodes[n]['origin']}\n{graph.nodes[n]['size']}"
        ax.annotate(label, (x, y), xytext=(0, 14), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6.5)  # fmt: skip
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[s], label=s) for s in names]
    handles += [
        plt.Line2D([], [], color="0.6", label="weight (in -> out)"),
        plt.Line2D([], [], color="black", ls="--", label="tie (move together)"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              title="space")  # fmt: skip
    ax.set_title(
        f"neuron-symmetry graph of {graph.graph.get('model', 'model')}: "
        f"{len(runs)} runs of neurons, {len([s for s in names if s != 'fixed'])} spaces",
        fontsize=10,
    )
    ax.margins(0.08, 0.2)
    ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
