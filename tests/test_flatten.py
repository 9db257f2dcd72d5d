"""Tests for isstreamer.flatten.flatten_object (the pairs log_object logs)."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import typing

import pytest

from isstreamer.flatten import MAX_DEPTH, flatten_object
from isstreamer.values import Skip, coerce_value

# psutil.virtual_memory() returns a namedtuple like this one (psutil itself is not needed).
svmem = collections.namedtuple("svmem", ["total", "available", "percent"])


class Point(typing.NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Reading:
    sensor: str
    value: float
    extra: dict = dataclasses.field(default_factory=dict)


class Mode(enum.Enum):
    ON = "on"


class Sensor:
    """Plain object: public attributes, a private one, methods, properties (one failing)."""

    unit = "C"  # class attribute: not an instance attribute, not a property

    def __init__(self) -> None:
        self.temp = 21.5
        self.name = "kitchen"
        self._secret = "hidden"
        self.callback = print
        self.bound = self.method

    def method(self) -> int:
        return 1

    @property
    def fahrenheit(self) -> float:
        return self.temp * 9 / 5 + 32

    @property
    def broken(self) -> float:
        raise RuntimeError("sensor offline")

    @property
    def _private_prop(self) -> int:
        return 1


class Slotted:
    __slots__ = ("a", "b", "_c", "unset")

    def __init__(self) -> None:
        self.a = 1
        self.b = "two"
        self._c = 3

    @property
    def total(self) -> int:
        return self.a + 1


class OnlyProperties:
    """2.0.0 logged only properties; they must still be logged."""

    @property
    def value(self) -> int:
        return 7


class Child(OnlyProperties):
    @property
    def extra(self) -> int:
        return 8


class Shadowed(OnlyProperties):
    value = 99  # a plain class attribute hides the parent's property


# ---------------------------------------------------------------------------- prefixes


def test_list_default_prefix() -> None:
    assert flatten_object([10, 20]) == [("list_0", 10), ("list_1", 20)]


def test_dict_default_prefix() -> None:
    assert flatten_object({"a": 1, "b": "x"}) == [("dict_a", 1), ("dict_b", "x")]


def test_explicit_prefix() -> None:
    assert flatten_object([1], key_prefix="x") == [("x_0", 1)]
    assert flatten_object({"a": 1}, key_prefix="x") == [("x_a", 1)]


def test_empty_prefix_means_bare_keys() -> None:
    assert flatten_object([1, 2], key_prefix="") == [("0", 1), ("1", 2)]
    assert flatten_object({"a": 1}, key_prefix="") == [("a", 1)]


def test_non_str_mapping_keys_use_str() -> None:
    assert flatten_object({1: "a", (2, 3): "b", None: "c"}, key_prefix="") == [
        ("1", "a"),
        ("(2, 3)", "b"),
        ("None", "c"),
    ]


def test_empty_containers_log_nothing() -> None:
    assert flatten_object([]) == []
    assert flatten_object({}) == []


# ---------------------------------------------------------------------------- container kinds


def test_psutil_like_namedtuple() -> None:
    mem = svmem(total=8_000_000, available=2_000_000, percent=75.0)
    assert flatten_object(mem) == [
        ("svmem_total", 8_000_000),
        ("svmem_available", 2_000_000),
        ("svmem_percent", 75.0),
    ]
    assert flatten_object(mem, key_prefix="mem") == [
        ("mem_total", 8_000_000),
        ("mem_available", 2_000_000),
        ("mem_percent", 75.0),
    ]


def test_typing_namedtuple_uses_field_names_not_indices() -> None:
    assert flatten_object(Point(1, 2)) == [("Point_x", 1), ("Point_y", 2)]


def test_dataclass_fields() -> None:
    assert flatten_object(Reading("t1", 2.5, {"k": 1})) == [
        ("Reading_sensor", "t1"),
        ("Reading_value", 2.5),
        ("Reading_extra_k", 1),
    ]


def test_other_mappings() -> None:
    od = collections.OrderedDict([("z", 1), ("a", 2)])
    assert flatten_object(od) == [("OrderedDict_z", 1), ("OrderedDict_a", 2)]
    dd = collections.defaultdict(int, {"n": 3})
    assert flatten_object(dd, "") == [("n", 3)]
    chain = collections.ChainMap({"c": 4})
    assert flatten_object(chain, "m") == [("m_c", 4)]


def test_sequences_use_indices() -> None:
    assert flatten_object((5, 6)) == [("tuple_0", 5), ("tuple_1", 6)]
    assert flatten_object(range(2)) == [("range_0", 0), ("range_1", 1)]
    assert flatten_object(collections.deque(["a"])) == [("deque_0", "a")]


def test_plain_object_attributes_and_properties_sorted() -> None:
    assert flatten_object(Sensor()) == [
        ("Sensor_fahrenheit", 70.7),
        ("Sensor_name", "kitchen"),
        ("Sensor_temp", 21.5),
    ]


def test_slots_and_properties() -> None:
    assert flatten_object(Slotted(), key_prefix="s") == [("s_a", 1), ("s_b", "two"), ("s_total", 2)]


def test_properties_only_object_like_2_0_0() -> None:
    assert flatten_object(OnlyProperties()) == [("OnlyProperties_value", 7)]
    assert flatten_object(Child(), "") == [("extra", 8), ("value", 7)]
    assert flatten_object(Shadowed(), "") == []


def test_object_without_public_state_logs_nothing() -> None:
    assert flatten_object(object()) == []


def test_numpy_array_flattened_by_index() -> None:
    np = pytest.importorskip("numpy")
    assert flatten_object(np.array([[1, 2], [3, 4]]), "m") == [
        ("m_0_0", 1),
        ("m_0_1", 2),
        ("m_1_0", 3),
        ("m_1_1", 4),
    ]


# ---------------------------------------------------------------------------- nesting


def test_nested_mapping_with_prefix() -> None:
    assert flatten_object({"a": {"b": 1}}, key_prefix="x") == [("x_a_b", 1)]


def test_nested_mixed_containers() -> None:
    data = {
        "mem": svmem(1, 2, 3.0),
        "pts": [Point(0, 1)],
        "r": Reading("s", 1.0),
        "t": (7,),
    }
    assert flatten_object(data, "") == [
        ("mem_total", 1),
        ("mem_available", 2),
        ("mem_percent", 3.0),
        ("pts_0_x", 0),
        ("pts_0_y", 1),
        ("r_sensor", "s"),
        ("r_value", 1.0),
        ("t_0", 7),
    ]


def test_nested_objects_sets_and_scalars_are_leaves() -> None:
    sensor = Sensor()
    when = dt.datetime(2024, 1, 1)
    data = {
        "obj": sensor,
        "set": {1},
        "s": "text",
        "b": b"raw",
        "n": None,
        "when": when,
        "mode": Mode.ON,
        "d": decimal.Decimal("1.5"),
    }
    assert flatten_object(data, "") == [
        ("obj", sensor),
        ("set", {1}),
        ("s", "text"),
        ("b", b"raw"),
        ("n", None),
        ("when", when),
        ("mode", Mode.ON),
        ("d", decimal.Decimal("1.5")),
    ]


def test_shared_reference_is_not_a_cycle() -> None:
    shared = [1]
    assert flatten_object({"a": shared, "b": shared}, "") == [("a_0", 1), ("b_0", 1)]


def test_cycle_stops_and_leaf_is_skipped_by_value_rules() -> None:
    data: dict = {"v": 1}
    data["self"] = data
    pairs = flatten_object(data, "")
    assert pairs == [("v", 1), ("self", data)]
    with pytest.raises(Skip) as info:
        coerce_value(pairs[1][1], False)
    assert info.value.reason == "container_value"


def test_list_cycle() -> None:
    lst: list = [1]
    lst.append(lst)
    assert flatten_object(lst) == [("list_0", 1), ("list_1", lst)]


def test_depth_limit() -> None:
    root: list = []
    node = root
    for _ in range(MAX_DEPTH + 10):
        child: list = ["deep"]
        node.append(child)
        node = child
    pairs = flatten_object(root, "")
    # root's children are depth 1; containers down to depth MAX_DEPTH are expanded
    expanded = [k for k, v in pairs if v == "deep"]
    leaves = [(k, v) for k, v in pairs if isinstance(v, list)]
    assert MAX_DEPTH == 32
    assert len(expanded) == MAX_DEPTH
    assert len(leaves) == 1
    key, leaf = leaves[0]
    assert key == "0" + "_1" * MAX_DEPTH  # the container at depth MAX_DEPTH + 1
    assert isinstance(leaf, list)
    with pytest.raises(Skip):
        coerce_value(leaf, False)


# ---------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    "value, name",
    [
        (3.5, "float"),
        (7, "int"),
        (True, "bool"),
        ("hi", "str"),
        (b"b", "bytes"),
        (None, "NoneType"),
        (decimal.Decimal("2"), "Decimal"),
        (Mode.ON, "Mode"),
        (dt.date(2024, 1, 1), "date"),
    ],
)
def test_top_level_scalar(value: object, name: str) -> None:
    assert flatten_object(value) == [(name, value)]
    assert flatten_object(value, key_prefix="") == [(name, value)]
    assert flatten_object(value, key_prefix="reading") == [("reading", value)]


def test_top_level_set_is_one_leaf() -> None:
    assert flatten_object({1, 2}, "s") == [("s", {1, 2})]


def test_numpy_scalar_top_level() -> None:
    np = pytest.importorskip("numpy")
    value = np.float64(2.5)
    assert flatten_object(value) == [("float64", value)]
    value32 = np.float32(1.5)
    assert flatten_object(value32, "x") == [("x", value32)]
