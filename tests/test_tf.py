"""selfsup.tf (TensorFlow SimCLR) against the PyTorch implementation: loss, gradients, head, encoder,
LARS, schedule, augmentation, and a short training run on real images.

Skipped as a whole where TensorFlow is not installed (``pip install selfsup[tensorflow]``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  # before TensorFlow: see selfsup/tf/__init__.py

tf = pytest.importorskip("tensorflow")

# Two logical CPUs for the MirroredStrategy test; possible only before TensorFlow sets up its devices.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:
    pass

import keras  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

import selfsup.tf  # noqa: E402, F401
from selfsup.losses import NTXentLoss  # noqa: E402
from selfsup.methods.simclr import simclr_view  # noqa: E402
from selfsup.models.backbones import ResNetBackbone  # noqa: E402
from selfsup.models.heads import simclr_projection_head  # noqa: E402
from selfsup.schedules import warmup_cosine  # noqa: E402
from selfsup.tf import augment, models  # noqa: E402
from selfsup.tf.losses import nt_xent_loss  # noqa: E402
from selfsup.tf.optim import LARS, WarmupCosine  # noqa: E402
from selfsup.tf.train import channel_stats, extract_features_tf, pretrain_simclr_tf, two_view_dataset  # noqa: E402
from selfsup.train.optim import LARS as TorchLARS  # noqa: E402
from selfsup.train.optim import parameter_groups  # noqa: E402
from selfsup.transforms.views import ViewConfig  # noqa: E402


def naive_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """Loop transcription of SimCLR's eq. 1 in float64."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        denominator = sum(math.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total -= math.log(math.exp(z[i] @ z[partner] / temperature) / denominator)
    return total / (2 * n)


def tf_loss_and_grads(z1: np.ndarray, z2: np.ndarray, temperature: float):
    a, b = tf.Variable(z1), tf.Variable(z2)
    with tf.GradientTape() as tape:
        loss = nt_xent_loss(a, b, temperature)
    grad_a, grad_b = tape.gradient(loss, [a, b])
    return float(loss), grad_a.numpy(), grad_b.numpy()


@pytest.mark.parametrize("n, dim, temperature", [(1, 3, 0.5), (4, 8, 0.1), (16, 32, 0.5), (33, 128, 1.0),
                                                 (64, 16, 0.07)])
def test_nt_xent_matches_torch_and_naive_reference(n, dim, temperature):
    rng = np.random.default_rng(n * 1000 + dim)
    z1, z2 = rng.normal(size=(2, n, dim)).astype(np.float32)
    loss, grad1, grad2 = tf_loss_and_grads(z1, z2, temperature)

    t1, t2 = torch.tensor(z1, requires_grad=True), torch.tensor(z2, requires_grad=True)
    torch_loss = NTXentLoss(temperature)(t1, t2)
    torch_loss.backward()
    assert abs(loss - torch_loss.item()) < 1e-5
    np.testing.assert_allclose(grad1, t1.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad2, t2.grad.numpy(), rtol=1e-4, atol=1e-6)

    reference = naive_nt_xent(z1, z2, temperature)
    assert abs(loss - reference) < 1e-4 * max(1.0, abs(reference))
    loss64, _, _ = tf_loss_and_grads(z1.astype(np.float64), z2.astype(np.float64), temperature)
    assert abs(loss64 - reference) < 1e-10


def test_nt_xent_float64_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 3, 5))
    _, grad1, _ = tf_loss_and_grads(z1, z2, 0.3)
    step = 1e-6
    for index in [(0, 0), (1, 3), (2, 4)]:
        plus, minus = z1.copy(), z1.copy()
        plus[index] += step
        minus[index] -= step
        numeric = (naive_nt_xent(plus, z2, 0.3) - naive_nt_xent(minus, z2, 0.3)) / (2 * step)
        assert abs(grad1[index] - numeric) < 1e-7


def test_nt_xent_rejects_bad_input():
    z = tf.zeros((4, 8))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(z, tf.zeros((4, 7)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nt_xent_loss(tf.zeros((4,)), tf.zeros((4,)))
    with pytest.raises(ValueError, match="empty"):
        nt_xent_loss(tf.zeros((0, 8)), tf.zeros((0, 8)))


def test_nt_xent_across_replicas_equals_the_global_batch():
    """Two replicas, each with half the pairs and negatives gathered from both: the mean of their
    losses is the global batch's loss, and the gradient reaching each replica's embeddings (losses
    divided by the replica count, as in training) is the global batch's gradient. This holds only
    if gradients flow back through the gathered negatives."""
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.skip("TensorFlow set up its devices before this module; two logical CPUs are needed")
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    rng = np.random.default_rng(7)
    n, dim, temperature = 6, 10, 0.2
    z1, z2 = rng.normal(size=(2, 2 * n, dim)).astype(np.float32)
    global_loss, global_grad1, global_grad2 = tf_loss_and_grads(z1, z2, temperature)

    def replica_step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = nt_xent_loss(a, b, temperature)
            scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
        return (loss, *tape.gradient(scaled, [a, b]))

    def shard(array):
        return lambda context: tf.constant(array[context.replica_id_in_sync_group * n:][:n])

    a = strategy.experimental_distribute_values_from_function(shard(z1))
    b = strategy.experimental_distribute_values_from_function(shard(z2))
    losses, grads1, grads2 = (strategy.experimental_local_results(value)
                              for value in tf.function(lambda a, b: strategy.run(replica_step, (a, b)))(a, b))
    assert abs(np.mean([float(x) for x in losses]) - global_loss) < 1e-5
    for replica_grads, global_grad in [(grads1, global_grad1), (grads2, global_grad2)]:
        gathered = np.concatenate([grad.numpy() for grad in replica_grads])
        np.testing.assert_allclose(gathered, global_grad, rtol=1e-4, atol=1e-6)


def torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in module.state_dict().items()}


def test_projection_head_matches_torch_in_train_and_eval_mode():
    torch.manual_seed(0)
    torch_head = simclr_projection_head(24, hidden_dim=40, output_dim=12)
    with torch.no_grad():  # non-trivial BatchNorm parameters and running statistics
        torch_head[1].weight.uniform_(0.5, 1.5)
        torch_head[1].bias.uniform_(-0.5, 0.5)
        torch_head[1].running_mean.uniform_(-1, 1)
        torch_head[1].running_var.uniform_(0.5, 2)
    keras_head = models.simclr_projection_head(24, hidden_dim=40, output_dim=12)
    layer_types = [type(layer).__name__ for layer in keras_head.layers]
    assert layer_types == ["Dense", "BatchNormalization", "ReLU", "Dense"]
    assert not keras_head.layers[0].use_bias and keras_head.layers[3].use_bias
    models.load_torch_weights(keras_head, torch_state(torch_head), models.torch_mlp_names(keras_head))
    inputs = np.random.default_rng(1).normal(size=(32, 24)).astype(np.float32)

    torch_head.eval()
    expected_eval = torch_head(torch.tensor(inputs)).detach().numpy()
    got_eval = keras_head(inputs, training=False).numpy()
    np.testing.assert_allclose(got_eval, expected_eval, rtol=1e-5, atol=1e-5)
    torch_head.train()  # batch statistics
    expected_train = torch_head(torch.tensor(inputs)).detach().numpy()
    got_train = keras_head(inputs, training=True).numpy()
    np.testing.assert_allclose(got_train, expected_train, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected_train, expected_eval, atol=1e-3)
    # Both moved their running mean by momentum 0.1 towards the batch mean.
    np.testing.assert_allclose(keras_head.layers[1].moving_mean.numpy(),
                               torch_head[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_projection_head_initialization_follows_torch_linear():
    head = models.simclr_projection_head(256, hidden_dim=512, output_dim=128)
    kernel = head.layers[0].kernel.numpy()
    bound = 1 / math.sqrt(256)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert np.abs(head.layers[3].bias.numpy()).max() <= 1 / math.sqrt(512)


@pytest.mark.parametrize("cifar_stem, image_size", [(True, 16), (False, 40)])
def test_resnet18_matches_torch_with_copied_weights(cifar_stem, image_size):
    torch.manual_seed(0)
    torch_encoder = ResNetBackbone("resnet18", cifar_stem=cifar_stem, width=0.125)
    keras_encoder = models.resnet18(image_size, width=0.125, cifar_stem=cifar_stem)
    assert keras_encoder.output_shape[-1] == torch_encoder.feature_dim
    trainable = sum(int(np.prod(v.shape)) for v in keras_encoder.trainable_weights)
    assert trainable == sum(p.numel() for p in torch_encoder.parameters())
    names = models.torch_resnet18_names(keras_encoder)
    models.load_torch_weights(keras_encoder, torch_state(torch_encoder), names)
    images = np.random.default_rng(2).normal(size=(4, image_size, image_size, 3)).astype(np.float32)
    torch_images = torch.tensor(images).permute(0, 3, 1, 2)
    torch_encoder.eval()
    np.testing.assert_allclose(keras_encoder(images, training=False).numpy(),
                               torch_encoder(torch_images).detach().numpy(), rtol=1e-4, atol=1e-4)
    torch_encoder.train()
    np.testing.assert_allclose(keras_encoder(images, training=True).numpy(),
                               torch_encoder(torch_images).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_load_torch_weights_reports_missing_and_unused_weights():
    keras_head = models.simclr_projection_head(8, 16, 4)
    state = torch_state(simclr_projection_head(8, 16, 4))
    names = models.torch_mlp_names(keras_head)
    with pytest.raises(ValueError, match="no '3.bias'"):
        models.load_torch_weights(keras_head, {k: v for k, v in state.items() if k != "3.bias"}, names)
    with pytest.raises(ValueError, match="left unused"):
        models.load_torch_weights(keras_head, {**state, "9.weight": np.zeros(3)}, names)


def test_resnet50_encoder_gives_pooled_2048_features():
    encoder = models.build_encoder("resnet50", 32)
    assert encoder.output_shape == (None, 2048)
    batch_norms = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in batch_norms)
    with pytest.raises(ValueError, match="width"):
        models.build_encoder("resnet50", 32, width=0.5)


def test_lars_steps_match_torch():
    rng = np.random.default_rng(3)
    shapes = {"weight": (5, 4), "zero_weight": (3, 2), "bias": (5,)}
    initial = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    initial["zero_weight"][:] = 0  # trust ratio 1 when the weight norm is 0
    gradients = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
                 for _ in range(3)]

    module = torch.nn.Module()
    for name, value in initial.items():
        module.register_parameter(name, torch.nn.Parameter(torch.tensor(value)))
    torch_optimizer = TorchLARS(parameter_groups(module, 0.05), lr=0.4, weight_decay=0.05)
    variables = {name: keras.Variable(value, name=name) for name, value in initial.items()}
    keras_optimizer = LARS(0.4, weight_decay=0.05)
    for step_gradients in gradients:
        for name, parameter in module.named_parameters():
            parameter.grad = torch.tensor(step_gradients[name])
        torch_optimizer.step()
        keras_optimizer.apply_gradients([(tf.constant(step_gradients[name]), variables[name])
                                         for name in shapes])
    for name, parameter in module.named_parameters():
        torch_value = parameter.detach().numpy()
        np.testing.assert_allclose(np.asarray(variables[name]), torch_value, rtol=1e-5, atol=1e-6)
        assert not np.allclose(torch_value, initial[name])


def test_warmup_cosine_matches_torch_schedule():
    for total, warmup in [(50, 7), (20, 0), (10, 10)]:
        schedule = WarmupCosine(0.6, total, warmup, final_factor=0.1)
        got = [float(schedule(step)) for step in range(total + 2)]
        expected = [0.6 * warmup_cosine(step, total, warmup, 0.1) for step in range(total + 2)]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(0.1, 0, 0)


@pytest.fixture
def cifar_images(cifar10_root) -> np.ndarray:
    """48 CIFAR-10 training images (N, 32, 32, 3) uint8, 16 from each of 3 classes."""
    class_dirs = sorted((cifar10_root / "train").iterdir())[:3]
    files = [path for class_dir in class_dirs for path in sorted(class_dir.iterdir())[:16]]
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])


def seed(value: int) -> tf.Tensor:
    return tf.constant([value, 0], tf.int64)


def identity_view(**changes) -> ViewConfig:
    settings = dict(crop_size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_probability=0.0,
                    jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0)
    return ViewConfig(**{**settings, **changes})


def test_augment_shapes_ranges_and_determinism(cifar_images):
    config = simclr_view(24)
    for index, image in enumerate(cifar_images[:8]):
        view = augment.augment_view(tf.constant(image), config, seed(index), normalize=False).numpy()
        assert view.shape == (24, 24, 3) and view.dtype == np.float32
        assert view.min() >= 0.0 and view.max() <= 1.0
    image = tf.constant(cifar_images[0])
    normalized = augment.augment_view(image, config, seed(5)).numpy()
    again = augment.augment_view(image, config, seed(5)).numpy()
    other = augment.augment_view(image, config, seed(6)).numpy()
    assert np.isfinite(normalized).all()
    assert np.array_equal(normalized, again) and not np.allclose(normalized, other)
    assert augment.augment_view(tf.constant(cifar_images[0, ..., :1]), config, seed(0)).shape == (24, 24, 3)
    with pytest.raises(TypeError, match="uint8"):
        augment.augment_view(tf.zeros((8, 8, 3)), config, seed(0))


def test_augment_probabilities_zero_and_one(cifar_images):
    image = tf.constant(cifar_images[1])
    as_float = cifar_images[1].astype(np.float32) / 255

    def view(seed_value: int = 0, normalize: bool = False, **changes) -> np.ndarray:
        return augment.augment_view(image, identity_view(**changes), seed(seed_value), normalize).numpy()

    np.testing.assert_allclose(view(), as_float, atol=1e-6)
    np.testing.assert_allclose(view(flip_probability=1.0), as_float[:, ::-1], atol=1e-6)
    luma = as_float @ np.array([[0.2989], [0.587], [0.114]])
    np.testing.assert_allclose(view(grayscale_probability=1.0), np.repeat(luma, 3, -1), atol=1e-5)
    brightened = view(3, jitter_probability=1.0, contrast=0, saturation=0, hue=0)
    unclipped = (brightened > 0) & (brightened < 1) & (as_float > 0)
    factors = brightened[unclipped] / as_float[unclipped]
    assert 0.2 <= factors.mean() <= 1.8 and factors.std() < 1e-3 and abs(factors.mean() - 1) > 1e-3
    solarized = np.where(as_float >= 0.5, 1 - as_float, as_float)
    np.testing.assert_allclose(view(solarize_probability=1.0), solarized, atol=1e-6)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    np.testing.assert_allclose(view(normalize=True, mean=mean, std=std), (as_float - mean) / std, atol=1e-5)
    # p = 0.5 applies to some draws and not to others.
    flips = [np.allclose(view(s, flip_probability=0.5), as_float[:, ::-1]) for s in range(20)]
    assert 3 <= sum(flips) <= 17


def test_color_operations_match_torchvision(cifar_images):
    image = cifar_images[2].astype(np.float32) / 255
    torch_image = torch.tensor(image).permute(2, 0, 1)

    def same(tf_output, torch_output, atol=1e-5):
        np.testing.assert_allclose(np.asarray(tf_output), torch_output.permute(1, 2, 0).numpy(), atol=atol)

    same(augment.adjust_brightness(image, 1.4), TF.adjust_brightness(torch_image, 1.4))
    same(augment.adjust_contrast(image, 0.3), TF.adjust_contrast(torch_image, 0.3))
    same(augment.adjust_saturation(image, 1.7), TF.adjust_saturation(torch_image, 1.7))
    same(augment.adjust_hue(image, -0.15), TF.adjust_hue(torch_image, -0.15), atol=1e-4)
    same(augment.gaussian_blur(image, 5, 1.3), TF.gaussian_blur(torch_image, [5, 5], [1.3, 1.3]))


def test_random_resized_crop_box_follows_torchvision():
    """Box statistics over many draws agree with torchvision's RandomResizedCrop."""
    from torchvision.transforms import v2

    height, width, draws = 40, 56, 1000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    draw = tf.function(lambda s: tf.stack(augment.random_resized_crop_box(height, width, scale, ratio, s)))
    boxes = np.array([draw(seed(s)).numpy() for s in range(draws)])
    top, left, crop_height, crop_width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (crop_height >= 1).all() and (crop_width >= 1).all()
    assert (top + crop_height <= height).all() and (left + crop_width <= width).all()
    torch.manual_seed(0)
    torch_crop = v2.RandomResizedCrop(32)
    torch_boxes = [torch_crop.make_params([torch.zeros(3, height, width)]) for _ in range(draws)]
    torch_area = np.mean([b["height"] * b["width"] for b in torch_boxes]) / (height * width)
    torch_log_ratio = np.mean([math.log(b["width"] / b["height"]) for b in torch_boxes])
    assert abs((crop_height * crop_width).mean() / (height * width) - torch_area) < 0.04
    assert abs(np.log(crop_width / crop_height).mean() - torch_log_ratio) < 0.03
    # No crop fits a 4 x 64 image at this ratio: the fallback is torchvision's central crop.
    fallback = augment.random_resized_crop_box(4, 64, (0.9, 1.0), ratio, seed(0))
    assert [int(v) for v in fallback] == [0, 29, 4, 5]


def test_two_view_dataset_draws_fresh_randomness_per_image(cifar_images):
    same_image = np.repeat(cifar_images[:1], 8, axis=0)
    view = simclr_view(32)
    dataset = two_view_dataset(same_image, view, view, batch_size=8, seed=0)
    first_epoch = [(a.numpy(), b.numpy()) for a, b in dataset]
    assert len(first_epoch) == 1
    view1, view2 = first_epoch[0]
    assert view1.shape == (8, 32, 32, 3)
    assert len({v.tobytes() for v in np.concatenate([view1, view2])}) == 16
    second_epoch = next(iter(dataset))[0].numpy()
    assert not np.allclose(second_epoch, view1)


def test_two_step_training_run_on_real_images(cifar_images):
    losses: list[float] = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda _, logs: losses.append(logs["loss"]))
    mean, std = channel_stats(cifar_images)
    encoder = pretrain_simclr_tf(cifar_images[:32], epochs=1, batch_size=16, width=0.125, warmup_epochs=0,
                                 projection_hidden_dim=64, projection_dim=16, mean=mean, std=std, seed=0,
                                 verbose=0, callbacks=[record])
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert 1.0 < losses[0] < 2 * math.log(31)  # about log(2N - 1) for near-random embeddings
    features = extract_features_tf(encoder, cifar_images, mean, std, batch_size=20)
    assert features.shape == (48, encoder.output_shape[-1]) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0
    with pytest.raises(ValueError, match="no full batch"):
        pretrain_simclr_tf(cifar_images[:8], epochs=1, batch_size=16)
    with pytest.raises(TypeError, match="uint8"):
        pretrain_simclr_tf(cifar_images.astype(np.float32), epochs=1, batch_size=16)


def test_cli_framework_tensorflow_trains_and_evaluates(tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.data.datasets import load_digits_data

    digits = load_digits_data("train")
    np.savez(tmp_path / "d.npz", images=digits.images[:64].numpy(), labels=digits.labels[:64].numpy())
    code = main(["pretrain", "--method", "simclr", "--framework", "tensorflow", "--data", str(tmp_path / "d.npz"),
                 "--test-data", str(tmp_path / "d.npz"), "--epochs", "1", "--batch-size", "32", "--width", "0.125",
                 "--projection-hidden-dim", "32", "--linear-max-iter", "2", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 0
    table = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert table["framework"] == "tensorflow" and 0 <= table["knn_top1"] <= 100
    assert (tmp_path / "run" / "encoder.weights.h5").exists()
    assert main(["pretrain", "--method", "byol", "--framework", "tensorflow", "--out", str(tmp_path / "x")]) == 2
    assert "SimCLR only" in capsys.readouterr().err
