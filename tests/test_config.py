"""Configuration fails fast with the key, the value and what was allowed."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flight.config import ConfigError, load_scenario

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_scenario_loads():
    files = sorted((REPO / "payload_sim" / "scenarios").glob("*.toml"))
    assert files
    for f in files:
        assert load_scenario(f).scenario.name


@pytest.mark.parametrize("override, key", [
    ("flight.tile_px=3", "flight.tile_px"),
    ("flight.cloud_discard_fraction=1.5", "flight.cloud_discard_fraction"),
    ("link.downlink_rate_bps=\"fast\"", "link.downlink_rate_bps"),
    ("link.no_such_key=1", "link.no_such_key"),
    ("sensor.strip_rows=100", "sensor.strip_rows"),
    ("scenario.epoch=\"yesterday\"", "scenario.epoch"),
    ("flight.cascade=[{model=\"ship_detect\"}]", "flight.cascade"),
    ("flight.cascade=[{model=\"cloud_screen\", when=\"sometimes\"}]", "flight.cascade[0].when"),
    ("flight.cascade=[{model=\"cloud_screen\", min_contrast=100.0}]", "flight.cascade[0].min_contrast"),
    ("flight.cascade=[{model=\"cloud_screen\", when=\"clear_water\"}]", "flight.cascade[0].when"),
    ("flight.cascade=[{model=\"cloud_screen\", enabled=false}]", "flight.cascade[0].enabled"),
    ("flight.cascade=[{model=\"cloud_screen\"}, {model=\"ship_detect\"}, {model=\"ship_detect\", when=\"clear_land\"}]",
     "flight.cascade[2].model"),
    ("flight.cascade=[{model=\"cloud_screen\"}, {model=\"ship_detect\", contrast_band=\"tir\"}]", "flight.cascade[1].contrast_band"),
])
def test_a_bad_value_names_its_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [override])
    assert err.value.key == key
    assert key in str(err.value)


def test_unknown_section_is_an_error(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[flihgt]\ntile_px = 64\n")
    with pytest.raises(ConfigError, match="flihgt"):
        load_scenario(f)


def test_unreadable_file_is_a_config_error(tmp_path):
    f = tmp_path / "s.toml"
    f.write_bytes(b"[scenario\n\xff")
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(f)


@given(st.text(max_size=200))
def test_random_text_never_crashes_the_loader(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("cfg") / "s.toml"
    f.write_text(text)
    try:
        load_scenario(f)
    except ConfigError:
        pass


def _float_keys():
    """Every float key of every section (and of a cascade step), as dotted override names."""
    import dataclasses
    import typing

    from flight.config import CascadeStep, Scenario

    keys = []
    for sec in dataclasses.fields(Scenario):
        cls = typing.get_type_hints(Scenario)[sec.name]
        if not dataclasses.is_dataclass(cls):  # extra: the simulator's own sections
            continue
        hints = typing.get_type_hints(cls)
        keys += [f"{sec.name}.{f.name}" for f in dataclasses.fields(cls) if float in typing.get_args(hints[f.name]) + (hints[f.name],)]
    hints = typing.get_type_hints(CascadeStep)
    keys += [f"cascade.{f.name}" for f in dataclasses.fields(CascadeStep) if hints[f.name] is float]
    return keys


@pytest.mark.parametrize("key", _float_keys())
def test_nan_is_refused_for_every_float_key(key):
    # NaN passes every range comparison: accepted, it silently disables what compares against it
    # (clear_tile_max_cloud = nan: no tile is ever clear, so no detector ever runs)
    if key.startswith("cascade."):
        override, want = f'flight.cascade=[{{model="cloud_screen", {key.split(".")[1]}=nan}}]', f"flight.cascade[0].{key.split('.')[1]}"
    else:
        override, want = f"{key}=nan", key
    with pytest.raises(ConfigError, match="NaN") as err:
        load_scenario(None, [override])
    assert err.value.key == want
