import itertools

import numpy as np
import pytest

import evaluate


def test_w2_of_a_translated_copy_is_the_length_of_the_shift():
    # For any pairing the cross term averages to 0, so W2(a, a + v) = |v| exactly.
    a = np.random.default_rng(0).normal(size=(300, 2))
    assert evaluate.wasserstein2(a, a + [0.3, -0.4]) == pytest.approx(0.5)


def test_w2_is_the_best_of_all_pairings():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    brute = min(
        np.mean(np.sum((a - b[list(p)]) ** 2, axis=1)) for p in itertools.permutations(range(6))
    )
    assert evaluate.wasserstein2(a, b) == pytest.approx(np.sqrt(brute))


def test_true_draws_score_near_1_and_noise_scores_far_above():
    rng = np.random.default_rng(2)
    true = evaluate.evaluate(evaluate.datasets.get_dataset("line", 1000, seed=3), "line")
    noise = evaluate.evaluate(rng.normal(size=(1000, 2)).astype(np.float32), "line")
    assert 0.7 < true["w2_ratio"] < 1.4
    assert noise["w2_ratio"] > 3


def test_support_checks_count_points_beyond_the_tolerance():
    line = np.array([[0.0, 0.0], [2.04, 0.0], [2.2, 0.0], [0.0, -4.5]])
    assert evaluate.SUPPORT_DISTANCE["line"](line) == pytest.approx([0, 0.04, 0.2, 0.5])
    circle = np.array([[0.0, 0.0], [0.0, 3.09], [0.0, 3.5], [1.5, 0.0], [0.1, 0.0]])
    assert evaluate.SUPPORT_DISTANCE["circle"](circle) == pytest.approx([0, 0, 0.41, 1.41, 0.01])
    metrics = evaluate.evaluate(np.repeat(line, 250, axis=0), "line")
    assert metrics["off_support_fraction"] == pytest.approx(0.5)


def test_the_command_line_scores_a_frame_of_a_frames_file(tmp_path, capsys):
    frames = np.stack(
        [
            np.random.default_rng(0).normal(size=(200, 2)),
            evaluate.datasets.get_dataset("line", 200, seed=5),
        ]
    )
    np.save(tmp_path / "frames.npy", frames)
    evaluate.main([str(tmp_path / "frames.npy"), "--dataset", "line"])
    assert "ratio" in capsys.readouterr().out


def test_a_run_stopped_before_its_first_frame_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "frames.npy", np.zeros((0, 1000, 2)))  # as a run that diverged at once
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(tmp_path), "--dataset", "line"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "holds no frames: its run stopped before its first" in error


@pytest.fixture(scope="module")
def dino():
    return evaluate.datasets.load("dino")


def test_a_true_draw_has_high_precision_and_recall_against_another(dino):
    precision, recall = evaluate.precision_recall(dino.draw(1000, 1)[0], dino.draw(1000, 2)[0])
    assert precision >= 0.85 and recall >= 0.85


def test_blur_loses_precision_but_keeps_recall(dino):
    blurred = dino.draw(1000, 1)[0] + np.random.default_rng(0).normal(0, 0.05, (1000, 2))
    precision, recall = evaluate.precision_recall(blurred, dino.draw(1000, 2)[0])
    assert precision < 0.5 and recall > 0.9


def test_points_snapped_to_the_cluster_centres_lose_recall(dino):
    samples = dino.draw(1000, 1)[0]
    centres = evaluate.datasets.datasaurus_units(evaluate.datasets.datasaurus_rows("dino"))
    nearest = np.argmin(evaluate.cdist(samples, centres), axis=1)
    precision, recall = evaluate.precision_recall(centres[nearest], dino.draw(1000, 2)[0])
    assert precision > 0.9 and recall < 0.5


def test_a_missing_half_of_the_shape_loses_recall_not_precision(dino):
    points = dino.draw(5000, 1)[0]
    left_half = points[points[:, 0] <= 0][:1000]
    precision, recall = evaluate.precision_recall(left_half, dino.draw(1000, 2)[0])
    assert precision > 0.85 and recall < 0.7


def test_sets_too_small_for_a_kth_neighbour_have_no_precision_or_recall(dino):
    # 3 samples have no 3rd neighbour among the others: their balls would hold everything
    precision, recall = evaluate.precision_recall(dino.draw(3, 1)[0], dino.draw(1000, 2)[0])
    assert np.isnan(precision) and np.isnan(recall)
    assert not np.isnan(evaluate.precision_recall(dino.draw(4, 1)[0], dino.draw(4, 2)[0])[0])


def test_references_have_the_samples_class_counts():
    moons = evaluate.datasets.load("moons")
    labels = np.repeat([0, 1], [300, 700])
    reference = evaluate.draw_like(moons.draw, labels, 1000, seed=0)  # class by class, in order
    assert evaluate.class_leakage(reference, np.sort(labels), moons).mean() < 0.01
    assert evaluate.class_leakage(reference, 1 - np.sort(labels), moons).mean() > 0.99


def test_many_samples_are_scored_on_a_subsample_keeping_class_shares():
    moons = evaluate.datasets.load("moons")
    labels = np.repeat([0, 1], [10000, 20000])
    samples = evaluate.draw_like(moons.draw, labels, len(labels), seed=0)
    metrics = evaluate.evaluate(samples, moons, labels=labels)
    assert metrics["n_scored"] == evaluate.SCORED_POINTS and metrics["n"] == 30000
    assert metrics["per_class"]["upper"]["n"] == evaluate.SCORED_POINTS // 3
    assert metrics["precision"] > 0.85 and metrics["recall"] > 0.85
    assert "(scored on 1000 of 30000 samples)" in evaluate.format_metrics(metrics)


def test_a_floor_computed_before_the_samples_scores_them_exactly_as_without_it():
    # A run computes w2_floor while it trains; the scores must not change, subsampling included.
    moons = evaluate.datasets.load("moons")
    labels = np.repeat([0, 1], [600, 900])
    samples = evaluate.draw_like(moons.draw, labels, len(labels), seed=5)
    floor = evaluate.w2_floor(moons, 1, len(labels), labels)
    assert evaluate.evaluate(samples, moons, 1, labels, floor) == evaluate.evaluate(
        samples, moons, 1, labels
    )
    with pytest.raises(ValueError, match="the floor of another scoring"):
        evaluate.evaluate(samples, moons, 2, labels, floor)  # drawn for seed 1
    with pytest.raises(ValueError, match="the floor of another scoring"):
        evaluate.evaluate(samples, evaluate.datasets.load("line"), 1, labels, floor)
