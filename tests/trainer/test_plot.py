"""The loss chart: valid SVG for any history, its lines where the steps and losses put them."""

import json
import math
import xml.etree.ElementTree as ElementTree

from chargpt.outputs import plot_losses
from chargpt.plot import loss_chart_svg, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def parse(history: list[dict]) -> ElementTree.Element:
    return ElementTree.fromstring(loss_chart_svg(history))


def polyline_points(root: ElementTree.Element, series: str) -> list[tuple[float, float]]:
    (line,) = [element for element in root.iter(f"{SVG}polyline") if element.get("class") == series]
    return [tuple(float(value) for value in pair.split(",")) for pair in line.get("points").split()]


def test_the_lines_follow_the_steps_in_order_and_higher_loss_is_drawn_higher():
    history = [{"step": step, "train_loss": 4.2 - step / 100, "val_loss": 4.3 - step / 120 + (step == 150) * 0.5}
               for step in (0, 50, 100, 150, 200)]
    root = parse(history)
    for key, series in (("train_loss", "train"), ("val_loss", "val")):
        points = polyline_points(root, series)
        assert len(points) == len(history)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        # x is one linear map of the step, y one decreasing linear map of the loss (SVG's y points down).
        x_per_step = (xs[-1] - xs[0]) / (history[-1]["step"] - history[0]["step"])
        y_per_loss = (ys[-1] - ys[0]) / (history[-1][key] - history[0][key])
        assert x_per_step > 0 and y_per_loss < 0
        for record, x, y in zip(history, xs, ys):
            assert math.isclose(x, xs[0] + (record["step"] - history[0]["step"]) * x_per_step, abs_tol=0.2)
            assert math.isclose(y, ys[0] + (record[key] - history[0][key]) * y_per_loss, abs_tol=0.2)
    texts = [element.text for element in root.iter(f"{SVG}text")]
    assert {"chargpt loss", "step", "cross-entropy loss", "train", "val"} <= set(texts)
    assert {"0", "100", "200"} <= set(texts), texts  # step ticks


def test_an_empty_history_and_a_single_point_still_make_a_chart():
    empty = parse([])
    assert not list(empty.iter(f"{SVG}polyline"))
    assert "no metrics recorded" in [element.text for element in empty.iter(f"{SVG}text")]
    single = parse([{"step": 50, "train_loss": 2.5, "val_loss": 2.5}])
    assert len(polyline_points(single, "train")) == 1
    assert len(list(single.iter(f"{SVG}circle"))) == 2  # a one-point line draws nothing: its marker shows it


def test_non_finite_losses_are_left_out():
    history = [{"step": 1, "train_loss": 3.0, "val_loss": math.nan}, {"step": 2, "train_loss": 2.0, "val_loss": 2.5}]
    root = parse(history)
    assert len(polyline_points(root, "train")) == 2
    assert len(polyline_points(root, "val")) == 1


def test_ticks_are_round_and_cover_the_values():
    assert nice_ticks(0, 2000) == [0, 500, 1000, 1500, 2000]
    ticks = nice_ticks(1.43, 4.18)
    assert ticks[0] <= 1.43 and ticks[-1] >= 4.18 and 3 <= len(ticks) <= 8
    assert nice_ticks(50, 50)[0] < 50 < nice_ticks(50, 50)[-1]


def test_plot_losses_writes_the_chart_of_metrics_jsonl(tmp_path):
    records = [{"step": 10, "train_loss": 3.0, "val_loss": 3.1}, {"step": 20, "train_loss": 2.0, "val_loss": 2.2}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(record) + "\n" for record in records) + '{"step": 3', encoding="utf-8")
    plot_losses(metrics, tmp_path / "loss.svg")
    assert len(polyline_points(ElementTree.parse(tmp_path / "loss.svg").getroot(), "val")) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loss.svg", "metrics.jsonl"]  # no temp file left
