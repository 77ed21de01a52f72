"""Your own points files, every Datasaurus shape, classes and classifier-free guidance."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import ablate
import datasets
import ddpm
import evaluate

POINTS = np.random.default_rng(0).normal(size=(50, 2)) * [10.0, 2.0] + [100.0, -5.0]


def test_a_csv_with_x_and_y_columns_and_labels(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text(
        "id,y,x,label\n"
        + "".join(f"{i},{y},{x},{'ab'[i % 2]}\n" for i, (x, y) in enumerate(POINTS))
    )
    points, labels, classes = datasets.read_points_file(path)
    assert (
        np.allclose(points, POINTS)
        and classes == ["a", "b"]
        and labels.tolist() == [i % 2 for i in range(50)]
    )


def test_without_x_and_y_the_first_two_numeric_columns_are_used(tmp_path):
    path = tmp_path / "points.tsv"
    path.write_text(
        "name\tu\tv\tw\n" + "".join(f"p{i}\t{x}\t{y}\t7\n" for i, (x, y) in enumerate(POINTS))
    )
    points, labels, classes = datasets.read_points_file(path)
    assert np.allclose(points, POINTS) and labels is None and classes == []


def test_an_npy_file_of_points(tmp_path):
    np.save(tmp_path / "points.npy", POINTS)
    assert np.allclose(datasets.read_points_file(tmp_path / "points.npy")[0], POINTS)


def write_points(path, points, labels=None):
    """A .csv of points (m, 2), with a label column when labels (m,) are given."""
    rows = [
        f"{x},{y}" + ("" if labels is None else f",{k}")
        for (x, y), k in zip(points, labels if labels is not None else points)
    ]
    path.write_text("x,y" + ("" if labels is None else ",label") + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_a_file_holds_out_a_tenth_of_each_class_the_same_rows_every_time(tmp_path):
    labels = np.array(["a"] * 300 + ["b"] * 100)
    path = write_points(
        tmp_path / "two.csv", np.random.default_rng(0).normal(size=(400, 2)), labels
    )
    dataset = datasets.load(path)
    train, train_labels = dataset.train_set()
    held, held_labels = dataset.unseen(1000, seed=0)  # all of them: there are fewer
    assert np.bincount(held_labels).tolist() == [30, 10] and len(train) == 360
    assert not set(map(tuple, held)) & set(map(tuple, train))  # never trained on
    assert np.array_equal(datasets.load(path).unseen(1000, seed=0)[0], held)  # one split
    assert datasets.load(path, held_out=0.0).train_set()[0].shape == (400, 2)


def test_samples_that_copy_the_training_rows_score_no_better_than_fresh_ones(tmp_path):
    line = datasets.load("line")
    path = write_points(tmp_path / "line.csv", line.draw(1000, seed=1)[0])
    held_out = datasets.load(path, held_out=0.5)  # 500 rows to train on, 500 to score against
    copies = evaluate.evaluate(held_out.train_set()[0], held_out)
    fresh = [evaluate.evaluate(line.draw(500, seed)[0], held_out) for seed in (2, 3, 4)]
    assert copies["w2_ratio"] >= min(m["w2_ratio"] for m in fresh)
    assert copies["precision"] <= max(m["precision"] for m in fresh) + 0.02
    assert copies["reference"] == "500 held-out rows"
    # Scored against its own rows, as before held-out rows, copying them was a perfect score.
    seen = datasets.load(path, held_out=0.0)
    assert evaluate.evaluate(seen.train_set()[0], seen)["w2"] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.csv", None, "file not found"),
        ("empty.csv", "", "cannot be read"),
        ("header.csv", "x,y\n", "is empty"),
        ("one.csv", "x,name\n1,a\n" * 1, "needs two numeric columns"),
        (
            "nan.csv",
            "x,y\n" + "1,2\n" * 20 + "nan,3\n",
            "rows have missing, non-numeric, NaN or infinite",
        ),
        (
            "inf.csv",
            "x,y\n" + "1,2\n" * 20 + "inf,3\n",
            "rows have missing, non-numeric, NaN or infinite",
        ),
        ("text.csv", "x,y\n" + "1,2\n" * 20 + "one,3\n", "rows have missing, non-numeric"),
        ("few.csv", "x,y\n" + "1,2\n" * 9, "has 9 points; at least 10"),
        (
            "unlabelled.csv",
            "x,y,label\n" + "1,2,a\n3,4,b\n" * 10 + "5,6,\n",
            "1 rows have no label",
        ),
        ("empty.npy", "", "cannot be read (EOFError"),
    ],
)
def test_a_bad_points_file_is_a_one_line_error_naming_file_and_problem(
    tmp_path, capsys, name, content, problem
):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit:
        ddpm.main(["--dataset", str(path), "--exps_dir", str(tmp_path / "exps")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1
    assert str(path) in err and problem in err


@pytest.mark.parametrize("spec", ["dino,star,dino", "moons,moons"])
def test_a_shape_named_twice_is_refused(capsys, spec):
    with pytest.raises(SystemExit) as exit:
        ddpm.main(["--dataset", spec])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "twice: each class once" in err


def test_names_may_have_spaces_and_a_file_an_upper_case_suffix(tmp_path):
    assert datasets.load("dino, star").classes == ["dino", "star"]
    with open(tmp_path / "POINTS.NPY", "wb") as file:  # np.save would add ".npy"
        np.save(file, POINTS)
    assert np.allclose(
        datasets.load(str(tmp_path / "POINTS.NPY"), held_out=0).train_set()[0], POINTS
    )


def test_dataset_list_prints_every_name(capsys):
    assert ddpm.main(["--dataset", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 16 and {
        "dino",
        "star",
        "bullseye",
        "x_shape",
        "datasaurus_circle",
        "moons",
        "line",
        "circle",
    } <= set(names)


def test_every_datasaurus_shape_is_its_142_rows_jittered_and_rescaled_like_dino():
    table = pd.read_csv(datasets.datasaurus_path(), sep="\t")  # read independently of datasets.py
    for name, shape in datasets.DATASAURUS_SHAPES.items():
        rows = table.loc[table["dataset"] == shape, ["x", "y"]].to_numpy()
        assert len(rows) == 142
        scaled = np.stack(((rows[:, 0] / 54 - 1) * 4, (rows[:, 1] / 48 - 1) * 4), axis=1)
        points = datasets.get_dataset(name, 500, seed=0)
        assert np.linalg.norm(points[:, None] - scaled[None], axis=2).min(axis=1).max() < 0.1, name


def test_a_comma_separated_list_makes_one_class_per_dataset():
    dataset = datasets.load("dino,star")
    points, labels = dataset.draw(1000, seed=0)
    assert dataset.classes == ["dino", "star"] and set(labels) == {0, 1}
    star = dataset.draw(100, seed=0, label=1)[0]
    assert np.array_equal(star, datasets.get_dataset("star", 100, seed=0))


def test_moons_classes_are_its_two_moons():
    dataset = datasets.load("moons")
    upper, lower = dataset.draw(500, 0, label=0)[0], dataset.draw(500, 0, label=1)[0]
    assert dataset.classes == ["upper", "lower"] and upper[:, 1].mean() > lower[:, 1].mean()


def cosine_ddpm(T=10):
    return ddpm.DDPM(ddpm.cosine_betas(T), sigma_min=0.002, sigma_max=10.0)


class SpyModel(torch.nn.Module):
    num_classes = 3

    def forward(self, x_t, t, c=None):
        self.seen = c
        return torch.zeros_like(x_t, requires_grad=True)


@pytest.mark.parametrize("p, expected_null", [(0.0, 0), (1.0, 1000)])
def test_cond_drop_prob_replaces_classes_by_the_null_class(p, expected_null):
    model, method = SpyModel(), cosine_ddpm()
    ddpm.loss_fn(
        model, method, torch.zeros(1000, 2), torch.zeros(1000, dtype=torch.long), cond_drop_prob=p
    )
    assert (model.seen == 3).sum().item() == expected_null


def test_about_a_tenth_of_the_classes_are_dropped_at_0_1():
    model, method = SpyModel(), cosine_ddpm()
    ddpm.loss_fn(
        model,
        method,
        torch.zeros(20000, 2),
        torch.ones(20000, dtype=torch.long),
        cond_drop_prob=0.1,
    )
    assert abs((model.seen == 3).float().mean().item() - 0.1) < 0.01


def test_guidance_mixes_conditional_and_unconditional_eps_as_in_ho_and_salimans():
    # on D = x - sigma eps (ddpm), the mix of the two D is the mix of the two eps
    model = ddpm.MLP(hidden_size=16, hidden_layers=1, embedding_size=8, num_classes=2)
    method, c = cosine_ddpm(), torch.tensor([0, 1, 0, 1, 1])
    sigma, x = method.sigmas[4].item(), torch.randn(5, 2)
    x_t, t = x / (1 + sigma**2) ** 0.5, torch.full((5,), 4.0)
    eps_c, eps_null = model(x_t, t, c), model(x_t, t, None)

    def D(scale):
        return ddpm.guided_D(model, method, x, sigma, c, scale)

    assert torch.allclose(D(1.0), x - sigma * eps_c, atol=1e-5)
    assert torch.allclose(D(0.0), x - sigma * eps_null, atol=1e-5)
    assert torch.allclose(D(3.0), x - sigma * (eps_null + 3 * (eps_c - eps_null)), atol=1e-5)


def test_the_guidance_interval_picks_which_steps_are_guided():
    # 10 steps: step i sits at (10 - i) / 10 in the chain, 1.0 (pure noise) to 0.1 (nearly clean).

    scales = [ddpm.guided_at(i, 10, 3.0, (0.0, 0.3)) for i in range(10)]
    assert scales == [1.0] * 7 + [3.0, 3.0, 3.0]  # only the last three steps of sampling
    assert [ddpm.guided_at(i, 10, 3.0, (0.5, 1.0)) for i in range(10)] == [3.0] * 5 + [1.0] * 5
    assert all(ddpm.guided_at(i, 10, 3.0) == 3.0 for i in range(10))  # by default every step


def test_sampling_guides_only_inside_the_interval():
    class Spy(ddpm.MLP):  # a guided step asks for eps twice per point (class and null) in one batch
        def forward(self, x_t, t, c=None):
            self.batches.append((int(t[0]), len(x_t)))
            return super().forward(x_t, t, c)

    model = Spy(hidden_size=8, hidden_layers=1, embedding_size=8, num_classes=2)
    model.batches = []
    ddpm.sample(
        model,
        cosine_ddpm(),
        4,
        torch.Generator().manual_seed(0),
        num_inference_steps=10,
        c=torch.zeros(4, dtype=torch.long),
        guidance_scale=2.0,
        guidance_interval=(0.0, 0.2),
    )
    assert model.batches == [(t, 8 if t < 2 else 4) for t in range(9, -1, -1)]


def test_leakage_counts_samples_nearer_another_class():
    dataset = datasets.load("moons")
    upper = dataset.draw(100, 5, label=0)[0]
    labels = np.array([0] * 90 + [1] * 10)  # the last ten claim to be lower moons
    assert evaluate.class_leakage(upper, labels, dataset).mean() == pytest.approx(0.1)


def test_a_conditional_run_on_own_data_samples_every_class_in_its_units(tmp_path):
    rng = np.random.default_rng(0)
    points = np.concatenate(
        [rng.normal([100, 50], 2, (300, 2)), rng.normal([140, 50], 2, (300, 2))]
    )
    path = tmp_path / "two.csv"
    path.write_text(
        "x,y,label\n"
        + "".join(f"{x},{y},{'left' if i < 300 else 'right'}\n" for i, (x, y) in enumerate(points))
    )
    args = [
        "--dataset",
        str(path),
        "--num_epochs",
        "40",
        "--train_batch_size",
        "64",
        "--eval_batch_size",
        "200",
        "--save_images_step",
        "10",
        "--exps_dir",
        str(tmp_path),
    ]
    assert ddpm.main(args) == 0
    frames, labels = (
        np.load(tmp_path / "base" / "frames.npy"),
        np.load(tmp_path / "base" / "frame_labels.npy"),
    )
    assert labels.tolist() == [0] * 100 + [1] * 100
    last = frames[-1]
    assert (
        abs(last[labels == 0, 0].mean() - 100) < 5 and abs(last[labels == 1, 0].mean() - 140) < 5
    )  # back in the data's units
    checkpoint = torch.load(tmp_path / "base" / "model.pth", weights_only=True)
    assert (
        checkpoint["classes"] == ["left", "right"] and abs(checkpoint["shift"][0].item() - 120) < 1
    )
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"left", "right"} and metrics["class_leakage"] < 0.05
    assert metrics["reference"] == "60 held-out rows" and metrics["n_scored"] == 60

    assert (
        ddpm.main(
            [
                "--checkpoint",
                str(tmp_path / "base" / "model.pth"),
                "--num_epochs",
                "0",
                "--class_label",
                "right",
                "--guidance_scale",
                "2",
                "--guidance_interval",
                "0",
                "0.5",
                "--eval_batch_size",
                "100",
                "--exps_dir",
                str(tmp_path),
                "--experiment_name",
                "right",
            ]
        )
        == 0
    )
    right = np.load(tmp_path / "right" / "frames.npy")[-1]
    assert abs(right[:, 0].mean() - 140) < 5
    assert json.loads((tmp_path / "right" / "config.json").read_text())["guidance_interval"] == [
        0.0,
        0.5,
    ]


def test_a_file_is_kept_by_its_absolute_path_so_the_run_works_from_any_folder(
    tmp_path, monkeypatch
):
    np.savetxt(tmp_path / "points.csv", POINTS, delimiter=",", header="x,y", comments="")
    monkeypatch.chdir(tmp_path)
    tiny = ["--num_epochs", "1", "--eval_batch_size", "100", "--exps_dir", "exps"]
    assert ddpm.main(["--dataset", "points.csv", *tiny]) == 0
    config = json.loads((tmp_path / "exps" / "base" / "config.json").read_text())
    assert config["dataset"] == str(tmp_path / "points.csv")
    monkeypatch.chdir(tmp_path / "exps")  # the same file by another relative path
    again = ["--checkpoint", "base/model.pth", "--dataset", "../points.csv", "--num_epochs", "0"]
    assert ddpm.main([*again, "--exps_dir", ".", "--experiment_name", "again"]) == 0
    assert evaluate.main(["base"]) == 0
    # ablate.py reuses a run of a file named by a relative path: it sees the same config
    monkeypatch.chdir(tmp_path)
    run = ablate.run_once(["--dataset", "points.csv", *tiny[:4]], tmp_path / "exps")
    trained_at = (run / "model.pth").stat().st_mtime_ns
    assert ablate.run_once(["--dataset", "points.csv", *tiny[:4]], tmp_path / "exps") == run
    assert (run / "model.pth").stat().st_mtime_ns == trained_at
