"""NT-Xent in TensorFlow: the same loss as :class:`selfsup.losses.NTXentLoss`."""

from __future__ import annotations

import tensorflow as tf


def nt_xent_loss(z1: tf.Tensor, z2: tf.Tensor, temperature: float = 0.5,
                 gather_distributed: bool = True) -> tf.Tensor:
    r"""NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", eq. 1), the TensorFlow twin of :class:`selfsup.losses.NTXentLoss`.

    For the 2N views of a batch, view i with positive partner j(i):

    .. math::
        \ell(i) = -\log \frac{\exp(\mathrm{sim}(z_i, z_{j(i)}) / t)}
                             {\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k) / t)}

    with sim the cosine similarity; the loss is the mean of :math:`\ell` over the 2N views.

    Shapes: ``z1, z2`` of shape (N, D), row n of each a positive pair -> scalar, computed in float32
    (float64 for float64 input).

    Under a ``tf.distribute`` strategy with more than one replica (and ``gather_distributed``), each
    replica computes the loss of its own 2N views against the 2NR views of all R replicas, gathered
    with ``ReplicaContext.all_gather``. That gather's gradient all-reduces (sums) the incoming
    gradient and hands each replica its own slice, so gradients flow through the negatives back to
    the replica that computed them, as :func:`selfsup.dist.gather_with_grad` does in PyTorch. As
    usual in TensorFlow, divide the loss by the number of replicas before taking gradients that the
    optimizer sums over replicas (:mod:`selfsup.tf.train` does).

    Raises:
        ValueError: on a non-positive temperature, tensors that are not 2-D, shapes that differ,
            or an empty batch (the last two when the shapes are known when tracing).
    """
    if not temperature > 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    if z1.shape.rank != 2 or z2.shape.rank != 2:
        raise ValueError(f"nt_xent_loss expects (N, D) tensors, got shapes {z1.shape} and {z2.shape}")
    if not z1.shape.is_compatible_with(z2.shape):
        raise ValueError(f"nt_xent_loss: z1 and z2 must have the same shape, got {z1.shape} and {z2.shape}")
    if z1.shape[0] == 0:
        raise ValueError("nt_xent_loss: the batch is empty (N = 0); it needs at least one pair")

    compute_dtype = tf.float64 if z1.dtype == tf.float64 else tf.float32
    # x / max(||x||, 1e-12), as torch.nn.functional.normalize: l2_normalize's epsilon bounds ||x||^2.
    z1 = tf.math.l2_normalize(tf.cast(z1, compute_dtype), axis=1, epsilon=1e-24)
    z2 = tf.math.l2_normalize(tf.cast(z2, compute_dtype), axis=1, epsilon=1e-24)
    n = tf.shape(z1)[0]
    local = tf.concat([z1, z2], axis=0)  # (2N, D), rows this replica computes the loss for

    context = tf.distribute.get_replica_context()
    if gather_distributed and context is not None and context.num_replicas_in_sync > 1:
        # Columns ordered [z1 of all replicas, z2 of all replicas], so this replica's rows sit at an offset.
        columns = tf.concat([context.all_gather(z1, axis=0), context.all_gather(z2, axis=0)], axis=0)
        replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
        offset, half = replica_id * n, context.num_replicas_in_sync * n
    else:
        columns, offset, half = local, 0, n

    # tf.constant, not tf.cast: casting the Python float would round it through float32 first.
    temperature_tensor = tf.constant(temperature, compute_dtype)
    logits = tf.matmul(local, columns, transpose_b=True) / temperature_tensor  # (2N, 2NR)
    rows = tf.range(2 * n)
    view_in_half = rows % n
    self_column = tf.where(rows < n, offset + view_in_half, half + offset + view_in_half)
    positive_column = tf.where(rows < n, half + offset + view_in_half, offset + view_in_half)
    # A view is never its own negative: drop the self-similarity from the denominator.
    is_self = tf.one_hot(self_column, depth=tf.shape(columns)[0], on_value=True, off_value=False)
    logits = tf.where(is_self, tf.constant(float("-inf"), compute_dtype), logits)
    per_view = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_column, logits=logits)
    return tf.reduce_mean(per_view)
