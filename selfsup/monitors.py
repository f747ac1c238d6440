"""Monitors of the embeddings during pretraining: is the representation spreading out or collapsing?

Every function takes embeddings of shape (B, D) (the projector outputs of one batch, one row per image)
and returns a Python float; none passes gradients (they are read-outs, computed in float64 on detached
copies). The training loop logs :func:`embedding_monitors` and checks :func:`collapse_warning`.

How the numbers read (D the embedding dimension):

================  ===========================  ============================
monitor           collapsed (all rows equal)   healthy / spread out
================  ===========================  ============================
normalized_std    0                            about 1/sqrt(D)
rankme            1                            up to min(B, D)
alignment         0 (views identical)          small (views agree)
uniformity        0 (its maximum)              towards -2t (= -4 at t = 2)
positive_cosine   1                            close to 1
negative_cosine   1                            about 0
================  ===========================  ============================

A low alignment alone means nothing: a collapsed encoder aligns perfectly. Read it beside uniformity,
normalized_std or negative_cosine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_embeddings(name: str, z: torch.Tensor, min_rows: int = 1) -> torch.Tensor:
    if z.ndim != 2:
        raise ValueError(f"{name} expects embeddings of shape (B, D), got shape {tuple(z.shape)}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and 1 column, got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name}: the embeddings contain NaN or infinite values")
    return z.detach().to(torch.float64)


def _check_pair(
    name: str, z1: torch.Tensor, z2: torch.Tensor, min_rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    if z1.shape != z2.shape:
        raise ValueError(f"{name}: z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    return _check_embeddings(name, z1, min_rows), _check_embeddings(name, z2, min_rows)


def normalized_std(z: torch.Tensor) -> float:
    r"""Mean per-dimension standard deviation of the l2-normalized embeddings (Chen and He 2021,
    "Exploring Simple Siamese Representation Learning", Sec. 4.1, Fig. 2).

    .. math::
        \bar z_b = z_b / \lVert z_b \rVert_2, \qquad
        \mathrm{normalized\_std}(z) = \frac{1}{D} \sum_{d=1}^{D} \mathrm{std}_b(\bar z_{b,d})

    with std the unbiased (B - 1) standard deviation over the batch, as ``Tensor.std`` computes it in the
    SimSiam and lightly code. Collapse to a constant vector gives 0; if the embeddings are isotropic
    Gaussian, each coordinate of :math:`\bar z` has variance 1/D, so the monitor is about
    :math:`1/\sqrt{D}` (slightly less: the mean of a std is below the root of the mean variance).

    Shapes: (B, D) with B >= 2 -> float. Raises ValueError on other shapes or non-finite values.
    """
    z = _check_embeddings("normalized_std", z, min_rows=2)
    return F.normalize(z, dim=1).std(dim=0).mean().item()


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    r"""Effective rank of the embedding matrix (Garrido et al. 2023, "RankMe: Assessing the
    Downstream Performance of Pretrained Self-Supervised Representations by Their Rank", eq. 1).

    .. math::
        p_k = \frac{\sigma_k(z)}{\lVert \sigma(z) \rVert_1} + \varepsilon, \qquad
        \mathrm{RankMe}(z) = \exp\Big(-\sum_{k=1}^{\min(B, D)} p_k \log p_k\Big)

    with :math:`\sigma_k(z)` the singular values of the (B, D) matrix itself, neither centred nor
    normalized, as in the paper. It is 1 for a matrix of rank one (all rows equal) and exactly
    min(B, D) when all singular values are equal (orthonormal rows), up to the :math:`\varepsilon`
    that keeps :math:`\log 0` away (off by about ``eps * min(B, D)`` relative). Being bounded by B, it
    needs batches larger than D to reach D.

    Shapes: (B, D) -> float. Raises ValueError on other shapes, non-finite values, or an all-zero matrix
    (whose spectrum has no distribution).
    """
    z = _check_embeddings("rankme", z)
    singular_values = torch.linalg.svdvals(z)
    total = singular_values.sum()
    if total <= 0:
        raise ValueError("rankme: the embeddings are all zero; their rank is undefined")
    p = singular_values / total + eps
    return torch.exp(-(p * torch.log(p)).sum()).item()


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    r"""Alignment of positive pairs (Wang and Isola 2020, "Understanding Contrastive Representation
    Learning through Alignment and Uniformity on the Hypersphere", eq. 4, ``align_loss``).

    .. math::
        \mathcal{L}_\mathrm{align} = \frac{1}{B} \sum_{b=1}^{B}
            \lVert \bar z_{1,b} - \bar z_{2,b} \rVert_2^{\alpha}

    with :math:`\bar z` the l2-normalized rows; row b of ``z1`` and ``z2`` are two views of one image.
    0 when the views map to the same point; at most :math:`2^\alpha`.

    Shapes: (B, D), (B, D) -> float. Raises ValueError on mismatched shapes, ``alpha <= 0`` or
    non-finite values.
    """
    if not alpha > 0:
        raise ValueError(f"alignment: alpha must be > 0, got {alpha}")
    z1, z2 = _check_pair("alignment", z1, z2)
    distances = (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).norm(dim=1)
    return distances.pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    r"""Uniformity of the embeddings on the sphere (Wang and Isola 2020, eq. 6, ``uniform_loss``).

    .. math::
        \mathcal{L}_\mathrm{uniform} = \log \frac{2}{B(B-1)} \sum_{a < b}
            \exp\big(-t \lVert \bar z_a - \bar z_b \rVert_2^2\big)

    over the distinct pairs of l2-normalized rows. 0 (its maximum) when all rows are equal; lower is
    more uniform. For rows uniform on the sphere :math:`S^{D-1}` it tends, as B grows, to
    :math:`-2t + \log E[e^{2t\cos}]`, about :math:`-2t + 2t^2/D` for large D (-4 at t = 2 in the limit).

    Shapes: (B, D) with B >= 2 -> float. Raises ValueError on other shapes, ``t <= 0`` or non-finite values.
    """
    if not t > 0:
        raise ValueError(f"uniformity: t must be > 0, got {t}")
    z = _check_embeddings("uniformity", z, min_rows=2)
    squared_distances = torch.pdist(F.normalize(z, dim=1), p=2).pow(2)
    # log-mean-exp, stable however large t is
    return (torch.logsumexp(-t * squared_distances, dim=0) - math.log(squared_distances.numel())).item()


def pair_cosines(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of the positive pairs and of the negative pairs among the 2N views.

    The 2N views are the rows of ``z1`` and ``z2``; view n of ``z1`` and view n of ``z2`` are positives.
    Every other unordered pair of distinct views is a negative, as in NT-Xent's denominator:
    N(2N - 2) of them (each counted once, since cosine is symmetric).

    Shapes: (N, D), (N, D) with N >= 2 -> (N,) positives and (N(2N - 2),) negatives, float64, detached.
    """
    z1, z2 = _check_pair("pair_cosines", z1, z2, min_rows=2)
    n = z1.shape[0]
    views = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    similarity = views @ views.T
    rows, columns = torch.triu_indices(2 * n, 2 * n, offset=1)
    is_negative = columns != rows + n  # with rows < columns, the positive partner of row r < n is r + n
    positives = similarity[torch.arange(n), torch.arange(n) + n]
    negatives = similarity[rows[is_negative], columns[is_negative]]
    return positives, negatives


def positive_negative_cosine(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity of the positive pairs and mean over all negative pairs among the 2N views
    (see :func:`pair_cosines` for which pairs), without forming the (2N, 2N) similarity matrix. A
    collapsed encoder gives (1, 1); a healthy contrastive one positives near 1 and negatives near 0.

    Shapes: (N, D), (N, D) with N >= 2 -> (positive mean, negative mean).
    """
    z1, z2 = _check_pair("positive_negative_cosine", z1, z2, min_rows=2)
    n = z1.shape[0]
    views = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    positive_sum = (views[:n] * views[n:]).sum()
    # The sum of all (2N)^2 cosines is |sum of the views|^2; without the 2N self-pairs (1 each) and the 2N
    # ordered positive pairs it leaves the 2N(2N - 2) ordered negatives, in O(ND) instead of O(N^2 D).
    negative_sum = views.sum(dim=0).pow(2).sum() - 2 * n - 2 * positive_sum
    return (positive_sum / n).item(), (negative_sum / (2 * n * (2 * n - 2))).item()


MONITOR_KEYS = ("normalized_std", "rankme", "alignment", "uniformity", "positive_cosine", "negative_cosine")


def embedding_monitors(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    """All monitors for one batch of two views, the keys the training loop logs.

    ``normalized_std`` and ``rankme`` are of ``z1`` (the statistics of one view, as in SimSiam and
    RankMe; the two views would double the rows with near-copies); ``alignment`` (alpha = 2) is between
    the views; ``uniformity`` (t = 2) is the mean of the two views' uniformity, as in Wang and Isola's
    training code; ``positive_cosine`` and ``negative_cosine`` come from :func:`positive_negative_cosine`.

    Embeddings with a NaN or an infinity (a diverging step) give NaN for every monitor rather than an
    error, so that logging never stops a run; the loss check is where divergence is handled.

    Shapes: (N, D), (N, D) with N >= 2 -> dict of floats.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        _check_pair("embedding_monitors", z1, z2, min_rows=2)  # raises, naming the shapes
    if not (torch.isfinite(z1).all() and torch.isfinite(z2).all()):
        return dict.fromkeys(MONITOR_KEYS, math.nan)
    # One copy to the CPU in float64 for all monitors: small matrices, where an accelerator's float64 SVD
    # would cost more in launches and synchronisation than it saves.
    z1, z2 = z1.detach().to("cpu", torch.float64), z2.detach().to("cpu", torch.float64)
    positive_cosine, negative_cosine = positive_negative_cosine(z1, z2)
    return {
        "normalized_std": normalized_std(z1),
        "rankme": rankme(z1),
        "alignment": alignment(z1, z2),
        "uniformity": (uniformity(z1) + uniformity(z2)) / 2,
        "positive_cosine": positive_cosine,
        "negative_cosine": negative_cosine,
    }


# Below 20% of the isotropic value 1/sqrt(D): a randomly initialised ResNet-18 with BYOL's or SimCLR's
# projector (D = 128) gives ~0.8 of it on CIFAR-10 images (and RankMe 64-76), while the collapsing
# SimSiam ablation of Chen and He's Fig. 2 falls to ~0.
COLLAPSE_STD_FRACTION = 0.2
# RankMe below 1% of D (and below 2, i.e. a single direction with some noise): dimensional collapse that
# the std alone can miss, since one dimension varying keeps the mean std up.
COLLAPSE_RANK_FRACTION = 0.01
COLLAPSE_RANK_FLOOR = 2.0


def collapse_warning(metrics: dict[str, float], dim: int) -> str | None:
    """A message when the monitors say the embeddings are collapsing, else None.

    Warns when ``normalized_std < 0.2 / sqrt(dim)`` (complete collapse: all images map near one point),
    or when ``rankme < max(2, 0.01 * dim)`` (dimensional collapse: the embeddings span about one
    direction). ``metrics`` is what :func:`embedding_monitors` returns (a missing key is skipped);
    ``dim`` is the embedding dimension D.
    """
    if dim < 1:
        raise ValueError(f"collapse_warning: dim must be >= 1, got {dim}")
    healthy_std = 1 / math.sqrt(dim)
    problems = []
    std = metrics.get("normalized_std")
    if std is not None and std < COLLAPSE_STD_FRACTION * healthy_std:
        problems.append(f"normalized std {std:.4f} is below {COLLAPSE_STD_FRACTION:.0%} of the "
                        f"healthy 1/sqrt(D) = {healthy_std:.4f}")
    rank = metrics.get("rankme")
    rank_threshold = max(COLLAPSE_RANK_FLOOR, COLLAPSE_RANK_FRACTION * dim)
    if rank is not None and rank < rank_threshold:
        problems.append(f"effective rank (RankMe) {rank:.2f} is below {rank_threshold:.2f} of D = {dim}")
    if not problems:
        return None
    return ("the embeddings are collapsing: " + "; ".join(problems)
            + ". Expect kNN accuracy near chance; for BYOL check the predictor and the target momentum.")
