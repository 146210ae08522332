"""Small editor (UI-format) workflows written by hand, in the shape ComfyUI's editor saves.

A node is ``{"id", "type", "mode", "inputs": [{"name", "type", "link"(, "widget")}],
"outputs": [{"name", "type", "links"}], "widgets_values"}``; a link is
``[id, origin_id, origin_slot, target_id, target_slot, type]``. :class:`UiGraph` keeps
both lists in step, so a test states only nodes and the links between them.
"""

from __future__ import annotations

from typing import Any


class UiGraph:
    """Builds one UI-format workflow."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.subgraphs: list[dict[str, Any]] = []

    def node(
        self,
        node_id: int,
        node_type: str,
        widgets: Any = None,
        *,
        inputs: list[tuple[str, str]] | None = None,
        widget_inputs: list[tuple[str, str]] | None = None,
        outputs: list[str] | None = None,
        mode: int = 0,
        title: str | None = None,
    ) -> dict[str, Any]:
        """Add a node; ``inputs`` are sockets, ``widget_inputs`` widgets with a socket."""
        node: dict[str, Any] = {
            "id": node_id,
            "type": node_type,
            "mode": mode,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs or []]
            + [
                {"name": n, "type": t, "link": None, "widget": {"name": n}}
                for n, t in widget_inputs or []
            ],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs or []],
            "widgets_values": [] if widgets is None else widgets,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, origin: int, origin_slot: int, target: int, input_name: str) -> int:
        """Link ``origin``'s output to ``target``'s input named ``input_name``."""
        link_id = len(self.links) + 1
        source = self._find(origin)
        sink = self._find(target)
        slot = next(i for i, e in enumerate(sink["inputs"]) if e["name"] == input_name)
        kind = sink["inputs"][slot]["type"]
        if origin_slot < len(source["outputs"]):
            source["outputs"][origin_slot]["links"].append(link_id)
            kind = source["outputs"][origin_slot]["type"]
        sink["inputs"][slot]["link"] = link_id
        self.links.append([link_id, origin, origin_slot, target, slot, kind])
        return link_id

    def build(self) -> dict[str, Any]:
        workflow: dict[str, Any] = {
            "last_node_id": max((n["id"] for n in self.nodes), default=0),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }
        if self.subgraphs:
            workflow["definitions"] = {"subgraphs": self.subgraphs}
        return workflow

    def _find(self, node_id: int) -> dict[str, Any]:
        return next(n for n in self.nodes if n["id"] == node_id)


def invert_png_mp4_ui(image: str = "example.png", prefix: str = "example") -> dict[str, Any]:
    """``examples/invert_png_mp4.json`` as the editor saves it, with what editors add.

    A note, a reroute, a muted preview and a bypassed blur on the way: none of them may
    change what runs.
    """
    g = UiGraph()
    g.node(1, "LoadImage", [image, "image"], outputs=["IMAGE", "MASK"])
    g.node(2, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(3, "SaveImage", [f"{prefix}/inverted"], inputs=[("images", "IMAGE")])
    g.node(4, "ImageBatch", inputs=[("image1", "IMAGE"), ("image2", "IMAGE")], outputs=["IMAGE"])
    g.node(5, "RepeatImageBatch", [12], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(
        6, "CreateVideo", [8], inputs=[("images", "IMAGE"), ("audio", "AUDIO")], outputs=["VIDEO"]
    )
    g.node(7, "SaveVideo", [f"{prefix}/blink", "mp4", "h264"], inputs=[("video", "VIDEO")])
    g.node(8, "MarkdownNote", ["Inverts the image, then blinks between the two."])
    g.node(9, "Reroute", inputs=[("", "*")], outputs=["IMAGE"])
    g.node(10, "PreviewImage", inputs=[("images", "IMAGE")], mode=2)
    g.node(11, "ImageBlur", [3, 1.0], inputs=[("image", "IMAGE")], outputs=["IMAGE"], mode=4)
    g.link(1, 0, 9, "")
    g.link(9, 0, 11, "image")
    g.link(11, 0, 2, "image")
    g.link(2, 0, 3, "images")
    g.link(9, 0, 4, "image1")
    g.link(2, 0, 4, "image2")
    g.link(4, 0, 5, "image")
    g.link(5, 0, 6, "images")
    g.link(6, 0, 7, "video")
    g.link(2, 0, 10, "images")
    return g.build()


def nested_subgraphs(levels: int = 7, per_level: int = 8) -> dict[str, Any]:
    """A small request that expands to ``per_level ** levels`` nodes: subgraphs nested
    ``levels`` deep, each holding ``per_level`` instances of the one below (the innermost
    ``per_level`` ``EmptyImage`` nodes). 7 levels of 8: about 3 KB, 2,097,152 nodes."""

    def instances(kind: str) -> list[dict[str, Any]]:
        return [{"id": i, "type": kind, "mode": 0} for i in range(1, per_level + 1)]

    def definition(sub_id: str, kind: str) -> dict[str, Any]:
        return {"id": sub_id, "name": sub_id, "nodes": instances(kind), "links": [],
                "inputs": [], "outputs": [], "widgets": []}  # fmt: skip

    subgraphs = [definition("level-1", "EmptyImage")]
    subgraphs += [definition(f"level-{n}", f"level-{n - 1}") for n in range(2, levels)]
    return {
        "nodes": instances(f"level-{levels - 1}"),
        "links": [],
        "definitions": {"subgraphs": subgraphs},
        "version": 0.4,
    }
