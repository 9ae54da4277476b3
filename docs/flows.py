"""Draw CLSC-2's material and product flows (docs/clsc2-flows.png): `python docs/flows.py`.

A schematic for the README: stocks are boxes, decisions (the nine actions, in
docs/MODEL-2.md's symbols) label the arrows, exogenous inflows are grey.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

STOCK = dict(boxstyle="round,pad=0.02", fc="#dbe9f6", ec="#1f4e79", lw=1.4)
OUTSIDE = dict(boxstyle="round,pad=0.02", fc="#eeeeee", ec="#777777", lw=1.0, ls="--")

# name: (x, y, label, style); coordinates in a 12 x 7 frame
NODES = {
    "supplier": (0.9, 5.6, "virgin supplier\n(may be down)", OUTSIDE),
    "market": (0.9, 3.1, "secondary\nmaterial market", OUTSIDE),
    "V": (3.6, 5.6, "V\nvirgin material (kg)", STOCK),
    "M": (3.6, 3.1, "M\nrecycled material (kg)", STOCK),
    "produce": (6.2, 4.35, "production\nq = (u_v + u_r)/m", STOCK),
    "P": (8.6, 4.35, "P\nproduct (units)", STOCK),
    "customers": (11.0, 4.35, "customers\ndemand d_t\n(unmet = lost)", OUTSIDE),
    "returns": (11.0, 1.6, "returns ρ·s(t−L_r)\ngraded A / B / C\n(C: scrap, landfilled)", OUTSIDE),
    "CA": (8.6, 1.6, "CA\ngrade-A cores", STOCK),
    "CB": (6.2, 1.6, "CB\ngrade-B cores", STOCK),
    "landfill": (3.6, 0.5, "landfill\n(cost + landfill tax)", OUTSIDE),
}


def _box(ax, name):
    x, y, label, style = NODES[name]
    w, h = 1.75, 0.85
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, **style))
    ax.text(x, y, label, ha="center", va="center", fontsize=8.5)


def _arrow(ax, a, b, label, color="#1f4e79", bend=0.0, dx=0.0, dy=0.0):
    (xa, ya, *_), (xb, yb, *_) = NODES[a], NODES[b]
    ax.annotate("", xy=(xb, yb), xytext=(xa, ya),
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.5, shrinkA=30, shrinkB=30,
                                connectionstyle=f"arc3,rad={bend}"))
    ax.text((xa + xb) / 2 + dx, (ya + yb) / 2 + dy, label, ha="center", va="center", fontsize=8, color=color,
            bbox=dict(fc="white", ec="none", pad=0.5))


def main(path: str = str(Path(__file__).with_name("clsc2-flows.png"))) -> None:
    fig, ax = plt.subplots(figsize=(10.5, 6.2))
    ax.set_xlim(-0.3, 12.2)
    ax.set_ylim(-0.2, 7.0)
    ax.axis("off")
    for name in NODES:
        _box(ax, name)
    _arrow(ax, "supplier", "V", "o: order (kg)\nin L_v periods", dy=-0.45)
    _arrow(ax, "market", "M", "o_m: buy (kg)\nnext period", dy=-0.45)
    _arrow(ax, "V", "produce", "u_v (kg)", dy=0.25)
    _arrow(ax, "M", "produce", "u_r (kg)", dy=-0.25)
    _arrow(ax, "produce", "P", "+q", dy=0.2)
    _arrow(ax, "P", "customers", "sales s_t", dy=0.2)
    _arrow(ax, "customers", "returns", "used products\ncome back", color="#555555", dx=0.0)
    _arrow(ax, "returns", "CA", "A", color="#555555", dy=0.2)
    _arrow(ax, "returns", "CB", "B", color="#555555", bend=-0.3, dy=-0.95)
    _arrow(ax, "CA", "P", "f: refurbish (η_f)", dx=0.85)
    _arrow(ax, "CA", "M", "g_A: disassemble\n(η_A·m kg each)", bend=0.2, dx=0.6, dy=0.75)
    _arrow(ax, "CB", "M", "g_B: disassemble\n(η_B·m kg each)", dx=-0.2, dy=0.0)
    _arrow(ax, "CA", "landfill", "w_A: dispose", bend=-0.25, dx=0.9, dy=-1.05)
    _arrow(ax, "CB", "landfill", "w_B: dispose", dx=0.35, dy=-0.2)
    ax.text(6.0, 6.75, "CLSC-2: stocks (blue), decisions on the arrows, outside world (grey)", ha="center",
            fontsize=10.5, weight="bold")
    ax.text(6.0, 6.4, "rules: recycled share of u_v + u_r over an accounting window, carbon tax on e_v·o, "
                       "emission cap, landfill tax, recovery target", ha="center", fontsize=8.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
