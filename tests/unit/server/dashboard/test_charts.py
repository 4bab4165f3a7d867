"""Chart geometry: where bars, points and ticks go, computed by hand."""

from __future__ import annotations

import pytest

from fleetup.server.dashboard._charts import bar_chart, line_chart, nice_ceiling, top_items


@pytest.mark.parametrize(("value", "expected"), [
    (0, 1), (-3, 1), (0.3, 0.5), (1, 1), (1.2, 2), (3, 5), (7, 10), (10, 10), (11, 20),
    (450, 500), (501, 1000)])
def test_nice_ceiling_is_the_next_1_2_5_step(value: float, expected: float) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)


def test_bars_are_scaled_to_the_ceiling_and_stand_on_the_baseline() -> None:
    # Plot: x from 40 to 440 (2 slots of 200), y from 10 to 210 (height 200), ceiling 10.
    chart = bar_chart([("a", 5), ("b", 10)], width=440, height=250, left=40, right=0,
                      top=10, bottom=40)
    a, b = chart.bars
    assert (a.x, a.width, a.y, a.height) == (70.0, 140.0, 110.0, 100.0)
    assert (b.x, b.width, b.y, b.height) == (270.0, 140.0, 10.0, 200.0)
    assert a.y + a.height == chart.bottom == 210
    assert [(t.position, t.label) for t in chart.y_ticks] == [
        (210, "0"), (160, "2.5"), (110, "5"), (60, "7.5"), (10, "10")]


def test_an_empty_bar_chart_has_axes_and_no_bars() -> None:
    chart = bar_chart([])
    assert chart.bars == ()
    assert chart.y_ticks[-1].label == "1"


def test_lines_break_where_nothing_was_measured() -> None:
    # x: 0, 100, 200, 300 (left 0, width 300); y: 0 % at 100, 100 % at 0.
    chart = line_chart(["h0", "h1", "h2", "h3"], [("ok", "ok", [1.0, 0.5, None, 0.25])],
                       width=300, height=110, left=0, right=0, top=0, bottom=10,
                       label_every=2)
    (series,) = chart.series
    assert [(p.x, p.y) for p in series.points] == [(0, 0), (100, 50), (300, 75)]
    assert series.segments == ("0.0,0.0 100.0,50.0", "300.0,75.0")
    assert series.points[1].label == "h1: 50%"
    assert [(t.position, t.label) for t in chart.x_ticks] == [(0, "h0"), (200, "h2"),
                                                              (300, "h3")]
    assert [t.label for t in chart.y_ticks] == ["0%", "25%", "50%", "75%", "100%"]


def test_top_items_sum_the_rest_as_other() -> None:
    items = [("a", 1.0), ("b", 9.0), ("c", 3.0), ("d", 5.0)]
    assert top_items(items, 4) == items
    assert top_items(items, 3) == [("b", 9.0), ("d", 5.0), ("other", 4.0)]
