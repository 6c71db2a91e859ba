"""Labeling configs: what the Label Studio backend reads from a project's config, and the config
``cast labelstudio-config`` prints.

A config the backend serves has an ``Image`` with a ``BrushLabels`` control on it (the regions it
predicts) and ``Relations`` (the part-of links; when the ``Relations`` tag lists labels,
``part-of`` must be one of them). Optionally, for interactive pre-annotation (smart tools):

- a ``KeyPointLabels`` on the same image: a click returns the segment under it as a brush region.
  Its label chooses the granularity, i.e. the tree level: ``whole`` (level 4), ``part`` (3),
  ``sub-part`` (2), ``fine part`` (1), or ``level N`` / ``LN``; labels with none of these names
  map onto the served levels in order, coarsest first. Alt+click (a negative point) removes the
  segment under it at that level from the answer.
- a ``RectangleLabels`` on the same image: a box returns the tree node whose mask overlaps it best
  (highest IoU over every served level).

The brush region an interactive answer gives is labelled with the keypoint's / rectangle's label
when the ``BrushLabels`` has it, else as pre-annotations are (:class:`cast.exports.LabelStudioTarget`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..exports import GRANULARITY, PART_OF, LabelStudioTarget

__all__ = ["ProjectConfig", "UnsupportedConfig", "read_config", "labeling_config", "PALETTE"]

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
_LEVEL_NAME = re.compile(r"^(?:level\s*|l)([1-4])\b", re.IGNORECASE)


class UnsupportedConfig(ValueError):
    """A labeling config the backend cannot serve; the message is one line, for Label Studio to show."""


@dataclass(frozen=True)
class Prompt:
    """A smart-tool control: its name and, per label value, the tree level it asks for."""

    name: str
    levels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectConfig:
    """What the backend needs from a project's labeling config."""

    target: LabelStudioTarget  # where pre-annotations go, and their labels
    keypoints: Prompt | None = None  # KeyPointLabels on the image (a click -> a segment)
    rectangles: Prompt | None = None  # RectangleLabels on the image (a box -> the best-matching node)

    def level_of(self, label: str | None, prompt: Prompt) -> int:
        """The tree level a smart-tool label asks for (the coarsest served level when unlabelled)."""
        if label is not None and label in prompt.levels:
            return prompt.levels[label]
        return max(self.target.levels)


def _granularity(labels: Sequence[str], levels: Sequence[int]) -> dict[str, int]:
    """Label value -> tree level: by name (``whole``, ``part``, ``level 2``, ``L1`` ...), the others
    onto the served levels in order, coarsest first."""
    by_name = {name.casefold(): lv for lv, name in GRANULARITY.items()}
    out: dict[str, int] = {}
    rest = []
    for label in labels:
        named = _LEVEL_NAME.match(label.strip())
        level = int(named.group(1)) if named else by_name.get(label.strip().casefold())
        if level is not None:
            out[label] = level
        else:
            rest.append(label)
    order = sorted(levels, reverse=True)
    for i, label in enumerate(rest):
        out[label] = order[min(i, len(order) - 1)]
    return out


def _labels(control: ET.Element) -> list[str]:
    return [str(el.get("value")) for el in control.iter("Label") if el.get("value") is not None]


def read_config(xml: str, levels: Sequence[int] = (1, 2, 3, 4)) -> ProjectConfig:
    """Read a project's labeling config.

    Raises:
        UnsupportedConfig: not XML, no ``Image``, no ``BrushLabels`` on an ``Image``, no
            ``Relations``, or relation labels without ``part-of``.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise UnsupportedConfig(f"the labeling config is not valid XML ({e})") from None
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image" and el.get("name")}
    if not images:
        raise UnsupportedConfig("the labeling config has no Image tag; CAST segments images")
    brush = next((el for el in root.iter("BrushLabels") if el.get("toName") in images), None)
    if brush is None:
        raise UnsupportedConfig("the labeling config has no BrushLabels on an Image; CAST's regions are brush masks")
    relations = next(iter(root.iter("Relations")), None)
    if relations is None:
        raise UnsupportedConfig("the labeling config has no Relations tag; CAST links parts to wholes with relations")
    relation_labels = [str(el.get("value")) for el in relations.iter("Relation")]
    if relation_labels and PART_OF not in relation_labels:
        raise UnsupportedConfig(f"the labeling config's Relations have no '{PART_OF}' label (it has {', '.join(relation_labels)})")
    to_name = str(brush.get("toName"))
    data_key = str(images[to_name].get("value", "")).lstrip("$")
    if not data_key:
        raise UnsupportedConfig(f"the Image '{to_name}' has no value such as $image")
    labels = _labels(brush)
    if not labels:
        raise UnsupportedConfig(f"the BrushLabels '{brush.get('name')}' has no Label")
    target = LabelStudioTarget(from_name=str(brush.get("name")), to_name=to_name, data_key=data_key, labels=tuple(labels),
                               relation_labels=(PART_OF,) if relation_labels else (), levels=tuple(sorted(levels)))

    def prompt(tag: str) -> Prompt | None:
        el = next((c for c in root.iter(tag) if c.get("toName") == to_name), None)
        return None if el is None else Prompt(str(el.get("name")), _granularity(_labels(el), target.levels))

    return ProjectConfig(target, prompt("KeyPointLabels"), prompt("RectangleLabels"))


def labeling_config(levels: Sequence[int] = (1, 2, 3, 4), labels: Sequence[str] = ()) -> str:
    """The labeling config that supports everything the backend does: the image, brush labels
    (``labels``, or one per served level named by granularity), part-of relations, a smart
    keypoint tool whose labels choose the granularity, and a smart rectangle tool."""
    levels = sorted(set(levels), reverse=True)
    names = [GRANULARITY[lv] for lv in levels]
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="Click with a granularity (whole, part, ...) or draw a box: CAST answers with a segment")
    ET.SubElement(view, "Image", name="image", value="$image", zoom="true")
    brush = ET.SubElement(view, "BrushLabels", name="label", toName="image")
    for i, lbl in enumerate(dict.fromkeys(labels or names)):
        ET.SubElement(brush, "Label", value=lbl, background=PALETTE[i % len(PALETTE)])
    keypoints = ET.SubElement(view, "KeyPointLabels", name="granularity", toName="image", smart="true")
    for i, name in enumerate(names):
        ET.SubElement(keypoints, "Label", value=name, background=PALETTE[i % len(PALETTE)])
    boxes = ET.SubElement(view, "RectangleLabels", name="box", toName="image", smart="true")
    ET.SubElement(boxes, "Label", value="best match", background=PALETTE[-1])
    relations = ET.SubElement(view, "Relations")
    ET.SubElement(relations, "Relation", value=PART_OF)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"
