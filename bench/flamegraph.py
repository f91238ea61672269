"""A flame graph (SVG) from collapsed stacks ("root;child;leaf N" lines, as py-spy's raw format
writes them): each frame a box as wide as its share of the samples, callers below callees.
Hover a box for its function, file and share. Frames under 0.1% of the samples are left out."""

from __future__ import annotations

import html
import zlib
from dataclasses import dataclass, field
from pathlib import Path

WIDTH = 1200
ROW = 16
TOP = 22  # the title's room
MIN_SHARE = 0.001


@dataclass
class Node:
    name: str
    samples: int = 0
    children: dict[str, Node] = field(default_factory=dict)


@dataclass(frozen=True)
class Box:
    x: float
    width: float
    depth: int
    node: Node


def tree(collapsed: dict[str, int]) -> Node:
    root = Node("all")
    for stack, n in collapsed.items():
        root.samples += n
        node = root
        for frame in stack.split(";"):
            node = node.children.setdefault(frame, Node(frame))
            node.samples += n
    return root


def layout(root: Node) -> list[Box]:
    total = root.samples or 1
    boxes: list[Box] = []

    def place(node: Node, x: float, depth: int) -> None:
        boxes.append(Box(x, node.samples / total * WIDTH, depth, node))
        for child in sorted(node.children.values(), key=lambda c: -c.samples):
            if child.samples / total >= MIN_SHARE:
                place(child, x, depth + 1)
            x += child.samples / total * WIDTH

    place(root, 0.0, 0)
    return boxes


def write(collapsed: dict[str, int], path: Path, title: str = "") -> None:
    root = tree(collapsed)
    boxes = layout(root)
    height = TOP + (max(b.depth for b in boxes) + 1) * ROW
    total = root.samples or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="4" y="14">{html.escape(title)}: {root.samples} samples (hover a box)</text>',
    ]
    for b in boxes:
        y = height - (b.depth + 1) * ROW  # the root at the bottom
        name = b.node.name
        tip = html.escape(f"{name}: {b.node.samples} samples, {b.node.samples / total:.1%}")
        hue = zlib.crc32(name.split(" (")[0].encode()) % 60
        label = html.escape(_short(name, int(b.width / 7))) if b.width > 30 else ""
        parts.append(
            f'<g><title>{tip}</title><rect x="{b.x:.1f}" y="{y}" width="{max(b.width - 0.5, 0.1):.1f}" '
            f'height="{ROW - 1}" fill="hsl({hue},80%,62%)"/>'
            f'<text x="{b.x + 2:.1f}" y="{y + ROW - 4}">{label}</text></g>'
        )
    parts.append("</svg>\n")
    path.write_text("".join(parts))


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 2, 0)] + ".."
