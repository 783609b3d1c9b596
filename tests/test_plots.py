"""The Pareto plots, read as a person reads them: labels never on top of each other, results 0.01 pp apart apart, and
the front on known points (the smoke suite's real records where a plot needs runs)."""
from __future__ import annotations

import dataclasses
import itertools

from matplotlib.patches import ConnectionPatch

from bench.reporting.plots import (MEMORY, MIN_ACCURACY_SPAN_PP, POINT_LABEL, TIME, configuration_points, pareto_figure,
                                   pareto_front)
from bench.reporting.tables import run_rows, speed_table
from bench.suite.config import Communication
from helpers import records_in


def test_pareto_front_on_known_points() -> None:
    points = [(1.0, 0.50), (2.0, 0.70), (2.0, 0.60), (3.0, 0.70), (0.5, 0.40), (4.0, 0.90), (4.0, 0.90), (5.0, 0.85)]
    # (2, .6) and (3, .7) are beaten by (2, .7); (5, .85) by (4, .9); equal points do not beat each other.
    assert pareto_front(points) == [True, True, False, False, True, True, True, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 0.1)]) == [True]


def test_pareto_labels_of_the_whole_suite_do_not_overlap(smoke_suite) -> None:
    """All twelve runs in one plot: the label column's rendered text boxes are pairwise disjoint, right of the axes
    and inside the figure; each label names model, precision and batch and has a leader line to its point."""
    points = configuration_points(run_rows(records_in(smoke_suite.results)))
    for x, log_x in ((TIME, True), (MEMORY, False)):
        figure = pareto_figure(points, x, "cost", "twelve runs", log_x=log_x)
        figure.draw_without_rendering()
        labels = [text for text in figure.texts if text.get_gid() == POINT_LABEL]
        boxes = [text.get_window_extent() for text in labels]
        assert len(labels) == len(points) == 12
        assert not [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b) in
                    itertools.combinations(zip(labels, boxes), 2) if box_a.overlaps(box_b)]
        axes_box, figure_box = figure.axes[0].get_window_extent(), figure.bbox
        assert all(box.x0 > axes_box.x1 and box.y0 >= figure_box.y0 and box.y1 <= figure_box.y1 for box in boxes)
        assert sorted(text.get_text() for text in labels) == sorted(
            f"{model}, fp32, b16, dataset {dataset}" for model, dataset in zip(points["model"], points["dataset"]))
        assert len([artist for artist in figure.artists if isinstance(artist, ConnectionPatch)]) == 12


def test_accuracy_axis_keeps_results_0_01_pp_apart_apart(smoke_suite) -> None:
    records = [r for r in records_in(smoke_suite.results) if r.dataset == "mnist"][:2]
    for record, accuracy in zip(records, (0.9950, 0.9951)):
        record.metrics["test_acc"] = accuracy
    points = configuration_points(run_rows(records))
    figure = pareto_figure(points, TIME, "training time, s", "two runs", log_x=True)
    figure.draw_without_rendering()
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN_PP and low < 99.50 and high > 99.51
    heights = axes.transData.transform(points[[TIME, "test_acc"]].to_numpy())[:, 1]
    assert abs(heights[0] - heights[1]) > 5  # pixels: visibly apart
    ticks = [label.get_text() for label in axes.get_yticklabels() if label.get_text()]
    assert len(set(ticks)) == len(ticks) >= 3 and all(len(tick.split(".")[1]) >= 2 for tick in ticks)
    assert axes.yaxis.get_offset_text().get_text() == ""  # no "+9.95e1" offset


def test_runs_apart_only_in_loader_order_or_communication_stay_apart_in_tables_and_plots(smoke_suite) -> None:
    """Another input pipeline or another gradient exchange is another configuration, never another seed of one."""
    records = [r for r in records_in(smoke_suite.results) if r.dataset == "mnist"]
    twins = [*records, *(dataclasses.replace(r, config={**r.config, "loader_order": "quasi_random"}) for r in records),
             *(dataclasses.replace(r, config={**r.config, "communication": dataclasses.asdict(Communication("fp16"))})
               for r in records)]
    runs = run_rows(twins)
    assert len(speed_table(runs)) == 3 * len(speed_table(run_rows(records))) and set(speed_table(runs)["n"]) == {1}
    figure = pareto_figure(configuration_points(runs), TIME, "training time, s", "three of each", log_x=True)
    labels = [text.get_text() for text in figure.texts if text.get_gid() == POINT_LABEL]
    assert len(labels) == len(set(labels)) == 3 * len(records)
    assert sum("loader order quasi_random" in text for text in labels) == len(records)
    assert sum("communication DDP's defaults" in text for text in labels) == 2 * len(records)
