"""The probe: reproducible, best-epoch and sweep selection on val, test scored once, files, compare."""

import numpy as np
import pytest
import torch

from vjepa_adapt import storage
from vjepa_adapt.errors import BadInputError
from vjepa_adapt.evaluate import probe as probe_mod
from vjepa_adapt.evaluate.probe import (
    ProbeRun,
    append_clip_vectors,
    build_probe,
    compare_arms,
    evaluate_probe,
    feature_stats,
    load_probe_results,
    probe_flags,
    run_probe,
    standardize,
    train_probe,
)

K, T, D = 4, 4, 16
CLASSES = ["still", "slow", "medium", "fast"]


def make_clusters(n: int = 160, seed: int = 0, noise: float = 2.0):
    """Tokens around one Gaussian centre per class; noisy enough that top-1 is not trivially 100%."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D))
    y = np.arange(n) % K
    tokens = (centres[y][:, None, :] + noise * rng.normal(size=(n, T, D))).astype(np.float16)  # (n, T, D)
    ids = [f"clip{i:04d}" for i in range(n)]
    splits = {c: ("train" if i % 5 < 3 else "val" if i % 5 == 3 else "test") for i, c in enumerate(ids)}
    labels = {c: int(v) for c, v in zip(ids, y)}
    feats = {"clip_ids": ids, "tokens": tokens, "mean": tokens.astype(np.float32).mean(axis=1)}
    return feats, labels, splits


FAST = dict(epochs=3, batch_size=32, lr=3e-3, n_resamples=500)


def test_run_probe_reproducible_and_learns(tmp_path):
    feats, labels, splits = make_clusters()
    state = torch.get_rng_state()
    a = run_probe(feats, labels, splits, CLASSES, tmp_path / "a", **FAST)
    b = run_probe(feats, labels, splits, CLASSES, tmp_path / "b", **FAST)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert a.metrics["top1"] == b.metrics["top1"]
    assert (a.metrics["ci_low"], a.metrics["ci_high"]) == (b.metrics["ci_low"], b.metrics["ci_high"])
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.history == b.history
    assert 0.5 < a.metrics["top1"] < 1.0  # above chance (0.25), below 100% so the BCa path is used
    c = run_probe(feats, labels, splits, CLASSES, tmp_path / "c", seed=1, **FAST)
    assert not np.array_equal(a.logits, c.logits)  # the seed really drives init/shuffling


def test_train_probe_keeps_best_val_epoch_earliest_on_ties(monkeypatch):
    feats, labels, splits = make_clusters(80)
    x, y = feats["tokens"], np.array([labels[c] for c in feats["clip_ids"]])
    scripted = iter([0.30, 0.50, 0.50, 0.40])  # epochs 2 and 3 tie: keep 2
    snapshots = []

    def fake_val(model, xv, yv, device):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return 1.0, next(scripted)

    monkeypatch.setattr(probe_mod, "_loss_and_accuracy", fake_val)
    run = train_probe(x[:60], y[:60], x[60:], y[60:], K, epochs=4, batch_size=16)
    assert run.best_epoch == 2 and run.best_val_acc == 0.5
    assert [h["val_acc"] for h in run.history] == [0.30, 0.50, 0.50, 0.40]
    for k, v in run.state_dict.items():  # the kept weights are epoch 2's, not the last epoch's
        assert torch.equal(v, snapshots[1][k]), k
    assert not all(torch.equal(run.state_dict[k], snapshots[3][k]) for k in run.state_dict)


def test_best_epoch_weights_reproduce_history_val_acc():
    feats, labels, splits = make_clusters(120, seed=2, noise=2.5)
    x, y = feats["tokens"], np.array([labels[c] for c in feats["clip_ids"]])
    run = train_probe(x[:80], y[:80], x[80:], y[80:], K, epochs=4, batch_size=16, lr=3e-3)
    accs = [h["val_acc"] for h in run.history]
    assert run.best_epoch == 1 + int(np.argmax(accs))
    preds, logits = evaluate_probe(run.build_model(), x[80:])
    assert logits.shape == (40, K) and logits.dtype == np.float32
    assert np.mean(preds == y[80:]) == pytest.approx(accs[run.best_epoch - 1])
    assert set(run.history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"}


def test_test_split_is_scored_once_and_never_trained_on(tmp_path, monkeypatch):
    feats, labels, splits = make_clusters()
    n_test = sum(s == "test" for s in splits.values())
    eval_calls, train_sizes = [], []
    real_eval, real_train = probe_mod.evaluate_probe, probe_mod.train_probe

    def spy_eval(model, x, **kw):
        eval_calls.append(len(x))
        return real_eval(model, x, **kw)

    def spy_train(train_x, train_y, val_x, val_y, *a, **kw):
        train_sizes.append((len(train_x), len(val_x)))
        return real_train(train_x, train_y, val_x, val_y, *a, **kw)

    monkeypatch.setattr(probe_mod, "evaluate_probe", spy_eval)
    monkeypatch.setattr(probe_mod, "train_probe", spy_train)
    res = run_probe(feats, labels, splits, CLASSES, tmp_path, sweep=[(5e-4, 0.05), (2e-3, 0.0)], **FAST)
    assert eval_calls == [n_test]  # one test pass, whatever the sweep size
    assert train_sizes == [(96, 32), (96, 32)]
    assert res.metrics["n_test"] == n_test == 32
    for row in res.history:
        assert not any("test" in k for k in row)


def test_sweep_picks_best_val_and_first_on_ties(tmp_path, monkeypatch):
    feats, labels, splits = make_clusters()
    val_by_lr = {1e-3: 0.5, 2e-3: 0.75, 3e-3: 0.75}

    def fake_train(train_x, train_y, val_x, val_y, num_classes, *, lr, weight_decay, seed, **kw):
        torch.manual_seed(0)
        model = build_probe("attentive", D, num_classes)
        kwargs = dict(kind="attentive", dim=D, num_classes=num_classes)
        return ProbeRun(model.state_dict(), kwargs, 1, val_by_lr[lr], lr, weight_decay, [{"epoch": 1, "train_acc": 1.0}])

    monkeypatch.setattr(probe_mod, "train_probe", fake_train)
    res = run_probe(feats, labels, splits, CLASSES, tmp_path, sweep=[(1e-3, 0.1), (2e-3, 0.0), (3e-3, 0.05)], **FAST)
    assert (res.metrics["lr"], res.metrics["weight_decay"], res.metrics["val_top1"]) == (2e-3, 0.0, 0.75)
    assert [s["val_top1"] for s in res.metrics["sweep"]] == [0.5, 0.75, 0.75]


def test_real_sweep_chooses_on_val(tmp_path):
    feats, labels, splits = make_clusters()
    res = run_probe(feats, labels, splits, CLASSES, tmp_path, sweep=[(1e-7, 0.05), (3e-3, 0.05)], **FAST)
    vals = [s["val_top1"] for s in res.metrics["sweep"]]
    assert res.metrics["val_top1"] == max(vals) and res.metrics["lr"] == 3e-3


def test_files_written_and_reloaded(tmp_path):
    feats, labels, splits = make_clusters()
    del labels["clip0000"]  # unlabelled (e.g. a dropped rare class)
    del splits["clip0001"]
    res = run_probe(feats, labels, splits, CLASSES, tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["metrics.json", "predictions.csv", "logits.npz", "history.json", "probe.pt"])
    m = storage.read_json(tmp_path / "metrics.json")
    assert m["n_dropped_no_label"] == 1 and m["n_dropped_no_split"] == 1
    assert m["chance"] == 0.25 and m["num_classes"] == K and m["ci_method"] == "bca"
    assert m["ci_low"] <= m["top1"] <= m["ci_high"]
    assert set(m["per_class_accuracy"]) == set(CLASSES)
    assert sum(m["per_class_support"].values()) == m["n_test"]
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "clip_id,label,pred,correct" and len(lines) == 1 + m["n_test"]
    back = load_probe_results(tmp_path)
    assert back.clip_ids == res.clip_ids and back.metrics == m
    np.testing.assert_array_equal(back.preds, back.logits.argmax(axis=1))
    np.testing.assert_array_equal(back.labels, [labels[c] for c in back.clip_ids])
    assert np.mean(back.correct) == pytest.approx(m["top1"])
    saved = storage.load_torch(tmp_path / "probe.pt")
    model = build_probe(**saved["model_kwargs"])
    model.load_state_dict(saved["state_dict"])
    test_rows = [feats["clip_ids"].index(c) for c in back.clip_ids]
    x = standardize(feats["tokens"][test_rows], saved["feature_mean"].numpy(), saved["feature_std"].numpy())
    np.testing.assert_allclose(evaluate_probe(model, x)[1], back.logits, rtol=1e-5, atol=1e-6)


def test_linear_probe_on_mean_vectors(tmp_path):
    feats, labels, splits = make_clusters()
    res = run_probe({"clip_ids": feats["clip_ids"], "mean": feats["mean"]}, labels, splits, CLASSES, tmp_path,
                    kind="linear", lr=1e-2, epochs=5, batch_size=32, n_resamples=500)
    assert res.metrics["kind"] == "linear" and res.metrics["top1"] > 0.5
    with pytest.raises(ValueError, match="tokens"):
        run_probe({"clip_ids": feats["clip_ids"], "mean": feats["mean"]}, labels, splits, CLASSES, tmp_path / "x", **FAST)


def test_bad_splits(tmp_path):
    feats, labels, splits = make_clusters(40)
    no_test = {c: ("val" if s == "test" else s) for c, s in splits.items()}
    with pytest.raises(BadInputError, match="test split"):
        run_probe(feats, labels, no_test, CLASSES, tmp_path, **FAST)
    splits["clip0003"] = "holdout"
    with pytest.raises(ValueError, match="unknown split"):
        run_probe(feats, labels, splits, CLASSES, tmp_path, **FAST)
    assert not (tmp_path / "metrics.json").exists()


def write_preds(folder, rows, class_names=CLASSES):
    text = "clip_id,label,pred,correct\n" + "".join(f"{c},{y},{p},{int(y == p)}\n" for c, y, p in rows)
    storage.write_text(folder / "predictions.csv", text)
    storage.write_json(folder / "metrics.json", {"class_names": list(class_names)})


def test_compare_arms_exact_delta_on_shared_clips(tmp_path):
    # reference right on c0..c4 (of c0..c9); arm (listed in another order, c2..c11) right on c2..c9
    ref = [(f"c{i}", 1, 1 if i < 5 else 0) for i in range(10)]
    arm = [(f"c{i}", 1, 1 if i < 10 else 0) for i in range(11, 1, -1)]
    write_preds(tmp_path / "ref", ref)
    write_preds(tmp_path / "arm", arm)
    r = compare_arms(tmp_path / "ref", tmp_path / "arm", n_resamples=1_000)
    # shared c2..c9 (8 clips): reference right on c2..c4 (3/8), arm right on all 8
    assert r.n == 8
    assert r.acc_ref == pytest.approx(3 / 8) and r.acc_arm == 1.0
    assert r.delta == pytest.approx(5 / 8)
    assert (r.n_ref_only, r.n_arm_only) == (0, 5)
    assert r.p_value == pytest.approx(2 / 2**5)
    swapped = compare_arms(tmp_path / "arm", tmp_path / "ref", n_resamples=1_000)
    assert swapped.delta == pytest.approx(-5 / 8)


def test_compare_arms_errors(tmp_path):
    write_preds(tmp_path / "a", [("c0", 1, 1), ("c1", 0, 1)])
    write_preds(tmp_path / "b", [("d0", 1, 1)])
    with pytest.raises(BadInputError, match="share no test clips"):
        compare_arms(tmp_path / "a", tmp_path / "b")
    write_preds(tmp_path / "c", [("c0", 2, 2)])
    with pytest.raises(BadInputError, match="different labels"):
        compare_arms(tmp_path / "a", tmp_path / "c")
    write_preds(tmp_path / "d", [("c0", 1, 1)], class_names=["x", "y", "z", "w"])
    with pytest.raises(BadInputError, match="class lists"):
        compare_arms(tmp_path / "a", tmp_path / "d")


def test_append_clip_vectors_for_head_only_arms():
    feats, _, _ = make_clusters(8)
    hidden = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    out = append_clip_vectors(feats, hidden)
    assert out["tokens"].shape == (8, T, D + 3) and out["tokens"].dtype == np.float16
    np.testing.assert_array_equal(out["tokens"][:, :, :D], feats["tokens"])
    np.testing.assert_array_equal(out["tokens"][5, 2, D:], hidden[5])  # same vector on every token
    np.testing.assert_array_equal(out["mean"][:, D:], hidden)
    assert out["clip_ids"] == feats["clip_ids"]
    with pytest.raises(ValueError, match="one vector per clip"):
        append_clip_vectors(feats, hidden[:7])


def test_read_predictions_rejects_non_integer_labels(tmp_path):
    storage.write_text(tmp_path / "predictions.csv", "clip_id,label,pred,correct\nc0,fast,1,0\n")
    with pytest.raises(BadInputError, match="integer class ids"):
        probe_mod.read_predictions(tmp_path / "predictions.csv")


def test_feature_stats_and_standardize_on_hand_values():
    train = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0]], dtype=np.float32)  # dim 1 is constant
    mean, std = feature_stats(train)
    np.testing.assert_allclose(mean, [2.0, 5.0, 3.0])
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0])  # population std 1, 0 -> 1, 1
    np.testing.assert_allclose(standardize(np.array([[4.0, 6.0, 3.0]]), mean, std), [[2.0, 1.0, 0.0]])
    tokens = np.array([[[0.0], [2.0]], [[4.0], [6.0]]], dtype=np.float32)  # (N=2, T=2, D=1): over clips x tokens
    mean, std = feature_stats(tokens)
    assert mean.tolist() == [3.0] and std.tolist() == pytest.approx([5 ** 0.5])


def test_standardized_probe_sees_features_of_any_scale(tmp_path):
    feats, labels, splits = make_clusters()
    tiny = {"clip_ids": feats["clip_ids"], "tokens": feats["tokens"] * 1e-4}
    on = run_probe(tiny, labels, splits, CLASSES, tmp_path / "on", **FAST)
    off = run_probe(tiny, labels, splits, CLASSES, tmp_path / "off", standardize_features=False, **FAST)
    assert on.metrics["standardized"] and not off.metrics["standardized"]
    assert on.metrics["top1"] > off.metrics["top1"] + 0.2


def test_probe_flags_name_one_class_and_no_fit():
    assert probe_flags(np.array([0, 1, 2, 3] * 5), train_acc=0.9, num_classes=4) == []
    one = probe_flags(np.array([2] * 19 + [1]), train_acc=0.9, num_classes=4)  # 95% one class
    assert one == ["predicts one class for 95% of test clips"]
    assert probe_flags(np.array([0, 1, 2, 3]), train_acc=0.30, num_classes=4) == [
        "train accuracy 30% stays near chance (25%)"]  # 0.30 < 1.5 x 0.25
    assert probe_flags(np.array([0, 1, 2, 3]), train_acc=0.40, num_classes=4) == []
