import math

import pytest
import torch

from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import linear_probe_accuracy


def naive_weighted_knn(train, train_labels, test, num_classes, k, temperature):
    """Straight from Wu et al. 2018: loop over test points, sort neighbours by cosine, vote exp(s/T)."""
    scores = []
    for query in test.double():
        similarities = []
        for feature, label in zip(train.double(), train_labels.tolist()):
            cosine = float(query @ feature / (query.norm() * feature.norm()))
            similarities.append((cosine, label))
        similarities.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for cosine, label in similarities[:k]:
            votes[label] += math.exp(cosine / temperature)
        scores.append(votes)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (5, 0.07), (200, 0.1), (7, 1.0)])
def test_knn_matches_naive_reference(k, temperature):
    generator = torch.Generator().manual_seed(k)
    train = torch.randn(60, 8, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    test = torch.randn(15, 8, generator=generator)
    expected = naive_weighted_knn(train, labels, test, 4, min(k, 60), temperature)
    scores = knn_predict(train, labels, test, 4, k=k, temperature=temperature, chunk_size=4)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-4)


def test_knn_accuracy_on_separable_clusters_and_errors():
    generator = torch.Generator().manual_seed(0)
    centers = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(20)
    train = centers[labels] + torch.randn(60, 3, generator=generator)
    test = centers[labels] + torch.randn(60, 3, generator=generator)
    assert knn_accuracy(train, labels, test, labels, k=10) == 100.0
    with pytest.raises(ValueError, match="labels"):
        knn_predict(train, labels[:5], test, 3)


def test_linear_probe_learns_a_linear_rule_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 10, generator=generator)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).long()
    test = torch.randn(200, 10, generator=generator)
    test_labels = (test[:, 0] + 0.5 * test[:, 1] > 0).long()
    assert linear_probe_accuracy(features, labels, test, test_labels, max_iter=50) > 95
    noise_labels = torch.randint(0, 2, (200,), generator=generator)
    assert linear_probe_accuracy(features, labels, test, noise_labels, max_iter=50) < 65


def test_logistic_regression_reaches_the_optimum_of_its_objective():
    from selfsup.eval.linear import fit_logistic_regression
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(120, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (120,), generator=generator)
    l2 = 1e-2
    weight, bias = fit_logistic_regression(features, labels, 3, l2, max_iter=500)
    # Gradient of mean CE + l2/2 ||W||^2, written out per sample: (softmax - onehot) x^T / N + l2 W.
    grad_w = torch.zeros(3, 5, dtype=torch.float64)
    grad_b = torch.zeros(3, dtype=torch.float64)
    for x, y in zip(features, labels):
        logits = [float(weight[c] @ x + bias[c]) for c in range(3)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        for c in range(3):
            residual = exps[c] / sum(exps) - (1.0 if c == int(y) else 0.0)
            grad_w[c] += residual * x / len(features)
            grad_b[c] += residual / len(features)
    grad_w += l2 * weight
    assert grad_w.abs().max() < 1e-5 and grad_b.abs().max() < 1e-5
    assert weight.abs().max() > 0.01  # a real fit, not the zero start


def _table(pretrained, random, pixels=None):
    rows = [{"name": "pretrained", "knn_top1": pretrained[0], "linear_top1": pretrained[1]},
            {"name": "random init", "knn_top1": random[0], "linear_top1": random[1]}]
    if pixels:
        rows.append({"name": "raw pixels", "knn_top1": pixels[0], "linear_top1": pixels[1]})
    return {"rows": rows}


def test_the_sentence_under_the_table_says_what_it_shows():
    from selfsup.eval.table import describe_table, format_table

    helped = describe_table(_table((74.44, 96.30), (66.30, 92.96), (50.0, 60.0)))
    assert helped == ("Pretraining helped: the pretrained backbone is 8.1 points ahead of the same network at "
                      "random init on kNN and 3.3 on the linear probe.")
    one = describe_table(_table((71.49, 86.86), (65.70, 93.32)))
    assert one.startswith("Pretraining helped on one probe only") and "5.8 points ahead on kNN" in one
    assert "6.5 points behind on the linear probe" in one
    none = describe_table(_table((60.0, 90.5), (60.2, 90.0)))
    assert none.startswith("Pretraining did not help here") and "0.2 points behind on kNN" in none
    pixels = describe_table(_table((74.44, 96.30), (66.30, 92.96), (92.59, 96.67)))
    assert pixels.endswith("Raw pixels score higher still (92.6 / 96.7): the features do not yet hold more about "
                           "the classes than the pixels do.")
    first_run = describe_table(_table((81.29, 95.77), (65.70, 93.32), (93.10, 95.77)))
    assert first_run.endswith("on the linear probe. Raw pixels are still ahead on kNN (93.1 against 81.3).")
    assert describe_table({"rows": [{"name": "pretrained", "knn_top1": 1.0, "linear_top1": 2.0}]}) is None
    assert format_table(_table((74.44, 96.30), (66.30, 92.96))).splitlines()[-1] == helped
