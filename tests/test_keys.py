"""Segment keys: one text form, parsed and written in one place."""

import pytest

from cast.keys import ROOT, TREE_LEVELS, Level, SegmentKey


@pytest.mark.parametrize("text,level,id_", [("L2-5", 2, 5), ("l4-0", 4, 0), ("S-17", 0, 17), ("root", 5, 0), ("ROOT", 5, 0)])
def test_parse_and_format_round_trip(text, level, id_):
    key = SegmentKey.parse(text)
    assert (key.level, key.id) == (Level(level), id_)
    assert SegmentKey.parse(str(key)) == key
    assert str(key) == {"l4-0": "L4-0", "ROOT": "root"}.get(text, text)


def test_kinds_order_and_hashing():
    assert ROOT.is_root and not ROOT.is_node and SegmentKey.parse("S-3").is_superpixel
    assert all(SegmentKey(lv, 0).is_node for lv in TREE_LEVELS)
    assert SegmentKey.parse((3, 2)) == SegmentKey(Level.L3, 2) and SegmentKey.parse(ROOT) is ROOT
    assert len({SegmentKey.parse("L1-1"), SegmentKey(1, 1), SegmentKey(Level.L1, 1)}) == 1
    assert sorted([SegmentKey(4, 0), SegmentKey(1, 9), SegmentKey(1, 2)]) == [SegmentKey(1, 2), SegmentKey(1, 9), SegmentKey(4, 0)]
    assert repr(SegmentKey(2, 5)) == "SegmentKey('L2-5')"


@pytest.mark.parametrize("bad", ["L5-1", "L0-1", "L2", "2-5", "S-x", "", "L2-5-1", "node"])
def test_bad_keys_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="expected like 'L2-5'"):
        SegmentKey.parse(bad)


def test_invalid_values():
    with pytest.raises(ValueError):
        SegmentKey(Level.L2, -1)
    with pytest.raises(ValueError):
        SegmentKey(Level.WHOLE, 3)
    with pytest.raises(ValueError):
        SegmentKey(7, 0)
