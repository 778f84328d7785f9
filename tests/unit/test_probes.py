"""Probe fits against independent computations (scikit-learn, float64 ridge on the whole matrix), a planted
signal through the whole pipeline, splits by document, control tasks, and bad task files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes import analysis as probe_analysis
from probes.fit import CrossMoments, accuracy, logistic, macro_f1, ridge
from probes.tasks import Source, Task, _control, _split, read_file
from workbench.errors import UsageError


def blobs(n=600, d=12, classes=4, layers=3, seed=0, signal=(1.0, 1.0, 1.0)):
    """Features [layer, n, d] whose class means differ by `signal[l]` per layer, and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    means = rng.normal(size=(classes, d))
    x = np.stack([rng.normal(size=(n, d)) + s * means[labels] for s in signal])
    return torch.as_tensor(x), labels


def test_ridge_from_streamed_statistics_equals_ridge_on_the_whole_matrix():
    """Streamed, merged statistics give the ridge solution computed from the whole feature matrix in float64."""
    x, labels = blobs()
    y = np.eye(4)[labels]
    stats = CrossMoments()
    for part in np.array_split(np.arange(600), 7):  # any partition, merged in any order
        piece = CrossMoments()
        piece.update(x[:, part], y[part])
        stats.merge(piece)
    lambdas = [1e-3, 1.0]
    w, b = ridge(stats, lambdas)
    for i, lam in enumerate(lambdas):
        for layer in range(3):
            xl = x[layer].numpy()
            xc, yc = xl - xl.mean(0), y - y.mean(0)
            sd = xc.std(0)  # ridge on standardised features, mapped back to the features as they are
            want = np.linalg.solve((xc / sd).T @ (xc / sd) + lam * 600 * np.eye(12), (xc / sd).T @ yc) / sd[:, None]
            np.testing.assert_allclose(w[i, layer].numpy(), want, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(b[i, layer].numpy(), y.mean(0) - xl.mean(0) @ want, rtol=1e-9, atol=1e-12)


def test_logistic_fit_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    x, labels = blobs(n=800, signal=(0.4, 0.4, 0.4))
    train, test = np.arange(600), np.arange(600, 800)
    w, b = logistic(x[:, train], torch.as_tensor(labels[train]), 4, c=0.5)
    for layer in range(3):
        ours = (x[layer, test] @ w[layer] + b[layer]).argmax(-1).numpy()
        ref = LogisticRegression(C=0.5, max_iter=2000).fit(x[layer, train].numpy(), labels[train])
        assert abs(accuracy(ours, labels[test]) - ref.score(x[layer, test].numpy(), labels[test])) <= 0.01
        np.testing.assert_allclose(w[layer].numpy() - w[layer].numpy().mean(1, keepdims=True),
                                   ref.coef_.T - ref.coef_.T.mean(1, keepdims=True), atol=2e-3)


def test_macro_f1_by_hand():
    pred, labels = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert macro_f1(pred, labels, 3) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_the_split_keeps_each_document_on_one_side_and_is_seeded():
    groups = np.repeat(np.arange(50), 7)
    split = _split(groups, seed=3)
    for g in range(50):
        assert len(set(split[groups == g])) == 1
    assert np.bincount(split[::7]).tolist() == [30, 10, 10]
    assert np.array_equal(split, _split(groups, seed=3)) and not np.array_equal(split, _split(groups, seed=4))


def test_control_labels_are_a_function_of_the_token_type_drawn_from_the_label_distribution():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 400, 20_000)
    labels = rng.choice(3, 20_000, p=[0.6, 0.3, 0.1])
    control = _control(types, labels, 3, seed=0, name="t")
    for t in np.unique(types)[:50]:
        assert len(set(control[types == t])) == 1
    per_type = np.array([control[types == t][0] for t in np.unique(types)])
    np.testing.assert_allclose(np.bincount(per_type, minlength=3) / len(per_type), [0.6, 0.3, 0.1], atol=0.08)


# ---------------------------------------------------------------------------------------------- the pipeline

LAYERS, D, VOCAB = 4, 64, 60


def planted_source(n_docs=80, length=30, seed=0) -> Source:
    """Documents of random tokens; label = token id mod 3 (a function of the token, as script is), or random."""
    rng = np.random.default_rng(seed)
    texts = [list(rng.integers(0, VOCAB, length)) for _ in range(n_docs)]
    ex_text = np.repeat(np.arange(n_docs), length)
    pos = np.tile(np.arange(length), n_docs)
    source = Source("tokens", texts, np.arange(n_docs) * 10, ex_text, pos, pos + 1)
    ids = np.array([texts[t][p] for t, p in zip(ex_text, pos)])
    source.tasks["mod3"] = Task("mod3", ["a", "b", "c"], ids % 3, None)
    source.tasks["random"] = Task("random", ["x", "y"], rng.integers(0, 2, len(ids)), None)
    source.split = _split(source.groups[ex_text], seed)
    for task in source.tasks.values():
        task.control = _control(source.token_type(), task.labels, len(task.classes), seed, task.name)
    return source


def planted_stream(signal_layer: int, identity_layer: int):
    """A stand-in for the forward pass: layer `signal_layer` holds a one-hot of (token id mod 3) plus noise, layer
    `identity_layer` a one-hot of the token id itself, the others noise only (a generator seeded per call)."""
    def stream(model, ids, names, fn):
        gen = torch.Generator().manual_seed(int(ids.sum()))
        for layer in range(LAYERS):
            h = torch.randn(*ids.shape, D, generator=gen)
            if layer == signal_layer:
                h[..., :3] += 3 * torch.nn.functional.one_hot(ids % 3, 3)
            if layer == identity_layer:  # little noise: a class is the sum of 20 token dimensions here
                h = 0.05 * h
                h[..., :VOCAB] += torch.nn.functional.one_hot(ids, VOCAB)
            fn("blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post", h)
    return stream


def test_a_planted_signal_is_found_at_its_layer_only_and_random_labels_stay_at_chance(monkeypatch):
    monkeypatch.setattr(probe_analysis.forward, "stream", planted_stream(signal_layer=2, identity_layer=3))
    model = torch.nn.Linear(1, 1)  # only its device is read
    probe = probe_analysis.Probe([planted_source()], LAYERS, seq_len=16, batch_size=8)
    probe.fit(model, (1e-3, 1e-1, 10.0), "ridge", 1.0)
    probe.predict(model)
    ds = probe.dataset()
    acc = ds["accuracy"].sel(task="mod3").values
    assert acc[2] > 0.95 and acc[3] > 0.95 and acc[0] < 0.5 and acc[1] < 0.5, acc
    assert np.all(np.abs(ds["accuracy"].sel(task="random").values - 0.5) < 0.08)  # chance: no leakage
    # Layer 2 encodes the class, not the token: the control task (a random class per token type) is not
    # decodable there. Layer 3 encodes the token itself: the control is as decodable as the task.
    control = ds["control_accuracy"].sel(task="mod3").values
    assert control[2] < 0.6 and control[3] > 0.95, control
    selectivity = ds["selectivity"].sel(task="mod3").values
    assert selectivity[2] > 0.35 and abs(selectivity[3]) < 0.05, selectivity
    np.testing.assert_allclose(ds["selectivity"].values, ds["accuracy"].values - ds["control_accuracy"].values)
    split = probe.sources[0].split
    assert int(ds["n_train"].sel(task="mod3")) == (split == 0).sum()
    assert ds["direction"].dtype == np.float16 and ds["direction"].shape == (LAYERS, 2, 3, D)


# ---------------------------------------------------------------------------------------------- task files

BAD = [
    ("not-json", '{"text": "a", "label": "x"}\nnot json\n', r"bad.jsonl:2: not a JSON object"),
    ("no-text", '{"label": "x"}\n', r"bad.jsonl:1: expected a JSON object with a string 'text'"),
    ("no-label", '{"text": "a"}\n', r"bad.jsonl:1: expected a 'label'"),
    ("one-class", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', r"one class \('x'\)"),
    ("span-outside", '{"text": "abc", "spans": [[1, 9, "x"]]}\n', r"bad.jsonl:1: span \[1, 9\] is outside the text"),
    ("mixed", '{"text": "a", "label": "x"}\n{"text": "b", "spans": [[0, 1, "y"]]}\n', "mixes"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_task_files_name_the_file_and_line(case, tmp_path):
    _, text, message = case
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        read_file(path)
    assert len(str(info.value).splitlines()) == 1


def test_an_unknown_built_in_task_lists_them():
    with pytest.raises(UsageError, match=r"unknown probe task 'scripts'; built-in tasks: script, language, fact"):
        probe_analysis.Probes(tasks=["scripts"])


def test_a_good_task_file(tmp_path):
    path = tmp_path / "sentiment.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in [("good", "pos"), ("bad", "neg")]))
    task = read_file(path)
    assert task.name == "sentiment" and task.level == "sequence" and len(task.records) == 2
    analysis = probe_analysis.Probes(tasks=[str(path)])
    assert analysis.inputs(None) == {"file:sentiment": task.fingerprint}
