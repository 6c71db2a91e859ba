"""Labeling configs: what the backend reads from a project's config, what it refuses (one line,
for Label Studio to show), and the config ``cast labelstudio-config`` prints."""

from __future__ import annotations

import pytest

from cast.exports import PART_OF
from cast.labelstudio.config import UnsupportedConfig, labeling_config, read_config

IMAGE = '<Image name="img" value="$photo"/>'
BRUSH = '<BrushLabels name="seg" toName="img"><Label value="Car"/><Label value="wheel"/></BrushLabels>'
RELATIONS = '<Relations><Relation value="part-of"/></Relations>'


def test_the_printed_config_is_read_back_with_every_tool():
    config = read_config(labeling_config(levels=(2, 3, 4)), levels=(2, 3, 4))
    t = config.target
    assert (t.from_name, t.to_name, t.data_key) == ("label", "image", "image")
    assert t.labels == ("whole", "part", "sub-part") and t.relation_labels == (PART_OF,) and t.levels == (2, 3, 4)
    assert config.keypoints is not None and config.keypoints.levels == {"whole": 4, "part": 3, "sub-part": 2}
    assert config.rectangles is not None and config.rectangles.name == "box"
    with_labels = read_config(labeling_config(labels=["car", "wheel"]))
    assert with_labels.target.labels == ("car", "wheel") and len(with_labels.keypoints.levels) == 4


def test_a_projects_own_names_and_labels_are_used():
    xml = (f"<View>{IMAGE}{BRUSH}<KeyPointLabels name='kp' toName='img' smart='true'><Label value='object'/>"
           f"<Label value='Level 2'/><Label value='detail'/></KeyPointLabels>{RELATIONS}</View>")
    config = read_config(xml)
    assert (config.target.from_name, config.target.to_name, config.target.data_key) == ("seg", "img", "photo")
    # named levels by name, the others onto the served levels, coarsest first
    assert config.keypoints.levels == {"Level 2": 2, "object": 4, "detail": 3}
    assert config.level_of("Level 2", config.keypoints) == 2 and config.level_of(None, config.keypoints) == 4
    # a region takes its class when the config has it, else its granularity, else the first label
    assert config.target.label("car", 1) == "Car" and config.target.label("tree", 4) == "Car"
    assert read_config(xml.replace("wheel", "part")).target.label("tree", 3) == "part"
    # relations without labels: the part-of links go unlabelled
    assert read_config(xml.replace(RELATIONS, "<Relations/>")).target.relation_labels == ()


@pytest.mark.parametrize("xml,says", [
    ("<View", "not valid XML"),
    (f"<View>{BRUSH}{RELATIONS}</View>", "no Image"),
    (f"<View>{IMAGE}{RELATIONS}</View>", "no BrushLabels on an Image"),
    (f"<View>{IMAGE}<BrushLabels name='b' toName='other'><Label value='x'/></BrushLabels>{RELATIONS}</View>",
     "no BrushLabels on an Image"),
    (f"<View>{IMAGE}{BRUSH}</View>", "no Relations"),
    (f"<View>{IMAGE}{BRUSH}<Relations><Relation value='next-to'/></Relations></View>", "no 'part-of' label"),
    (f"<View>{IMAGE}<BrushLabels name='b' toName='img'/>{RELATIONS}</View>", "has no Label"),
])
def test_configs_it_cannot_serve_are_refused_in_one_line(xml, says):
    with pytest.raises(UnsupportedConfig, match=says) as e:
        read_config(xml)
    assert "\n" not in str(e.value)
