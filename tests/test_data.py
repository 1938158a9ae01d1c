import os
import pickle
import urllib.error
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cifar_lib import data
from cifar_lib.augment import (
    AugmentationConfig,
    build_test_transform,
    build_train_transform,
    coarse_dropout_transform,
)
from cifar_lib.data import CIFAR10_CLASSES, get_data_loaders, load_cifar10
from cifar_lib.errors import DatasetError


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    data._MEMORY_CACHE.clear()
    yield
    data._MEMORY_CACHE.clear()


def test_image_folder_loads_every_image_with_its_label(image_folder, synthetic):
    arrays = load_cifar10(image_folder)
    assert arrays.source == "image-folder"
    assert arrays.train_images.shape == (300, 32, 32, 3)
    assert arrays.test_images.shape == (100, 32, 32, 3)
    assert arrays.train_images.dtype == np.uint8
    assert np.bincount(arrays.train_labels).tolist() == [30] * 10
    # PNG is lossless: the images come back exactly, sorted by class.
    order = np.argsort(synthetic.train_labels, kind="stable")
    assert np.array_equal(arrays.train_images, synthetic.train_images[order])
    assert np.array_equal(arrays.train_labels, synthetic.train_labels[order])


def test_data_dir_comes_from_the_environment(image_folder, monkeypatch):
    monkeypatch.setenv("CIFAR_LIB_DATA_DIR", image_folder)
    assert load_cifar10().location == image_folder


def test_decoded_arrays_are_cached_on_disk(image_folder, monkeypatch):
    load_cifar10(image_folder)
    data._MEMORY_CACHE.clear()
    calls = []
    monkeypatch.setattr(data, "_decode", lambda path: calls.append(path))
    arrays = load_cifar10(image_folder)
    assert calls == [] and len(arrays.train_images) == 300


def test_loaders_give_normalised_batches(image_folder):
    train, test = get_data_loaders(batch_size=16, num_workers=0, data_dir=image_folder)
    images, labels = next(iter(train))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert len(train.dataset) == 300 and len(test.dataset) == 100
    assert -3 < images.mean() < 3


def test_subset_and_validation_split(image_folder):
    train, validation, test = get_data_loaders(
        batch_size=8,
        num_workers=0,
        data_dir=image_folder,
        validation_size=50,
        subset=100,
    )
    assert len(train.dataset) == 100
    assert len(validation.dataset) == 50
    assert len(test.dataset) == 100


def test_validation_images_are_held_out_of_training_and_not_augmented(synthetic):
    train, validation, _ = get_data_loaders(
        batch_size=8, num_workers=0, arrays=synthetic, validation_size=50
    )

    def rows(images):
        return {image.tobytes() for image in images}

    trained, held = rows(train.dataset.images), rows(validation.dataset.images)
    assert len(held) == 50 and not trained & held  # no image in both
    assert trained | held == rows(synthetic.train_images)  # none lost
    first, second = ([batch[0] for batch in validation] for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_augmentations_make_tensors_without_warnings():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = build_train_transform(seed=0)
        test = build_test_transform()
        out = train(image=image)["image"]
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert torch.allclose(
            test(image=image)["image"][0, 0, 0],
            torch.tensor((image[0, 0, 0] / 255 - 0.4914) / 0.2023, dtype=torch.float32),
            atol=1e-5,
        )


def test_coarse_dropout_cuts_exactly_one_16x16_hole():
    transform = coarse_dropout_transform(AugmentationConfig(hole_p=1.0))
    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    for _ in range(20):
        out = transform(image=white)["image"]
        assert (out == 0).all(axis=2).sum() == 16 * 16


def test_worker_processes_draw_different_augmentations(image_folder):
    """Each worker reseeds its copy of the pipeline; otherwise workers repeat."""
    arrays = load_cifar10(image_folder)
    same = np.repeat(arrays.train_images[:1], 64, axis=0)
    dataset = data.ArrayDataset(same, np.zeros(64), build_train_transform(seed=0))
    loader = data.make_loader(
        dataset, batch_size=32, train=False, num_workers=2, seed=0
    )
    first, second = (batch for batch, _ in loader)
    assert not torch.equal(first, second)


def test_same_seed_same_epoch_same_batches(image_folder):
    def first_batch(epoch):
        train, _ = get_data_loaders(batch_size=8, num_workers=0, data_dir=image_folder)
        data.set_epoch(train, seed=3, epoch=epoch)
        return next(iter(train))

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- bad input ----------------------------------------------------------------------


def test_missing_dataset_without_network_says_where_to_put_it(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def no_network(self):
        Path(self.root).mkdir(parents=True, exist_ok=True)  # as torchvision does
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    with pytest.raises(DatasetError, match="could not be downloaded.*put a copy there"):
        load_cifar10(tmp_path)
    assert tmp_path.is_dir()  # it was there before
    with pytest.raises(DatasetError, match="could not be downloaded"):
        load_cifar10(tmp_path / "mistyped" / "data")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_folder_without_test_split(writable_folder):
    import shutil

    shutil.rmtree(Path(writable_folder) / "test")
    with pytest.raises(DatasetError, match="no test/ folder"):
        load_cifar10(writable_folder)


def test_unknown_class_folder(writable_folder):
    Path(writable_folder, "train", "dog").rename(
        Path(writable_folder, "train", "doggo")
    )
    with pytest.raises(DatasetError, match=r"unknown class folders \['doggo'\]"):
        load_cifar10(writable_folder)


def test_missing_class_folder(writable_folder):
    import shutil

    shutil.rmtree(Path(writable_folder, "test", "frog"))
    with pytest.raises(DatasetError, match=r"missing class folders \['frog'\]"):
        load_cifar10(writable_folder)


def test_a_file_where_a_class_folder_belongs(writable_folder):
    import shutil

    shutil.rmtree(Path(writable_folder, "train", "ship"))
    Path(writable_folder, "train", "ship").write_text("not a folder")
    with pytest.raises(DatasetError, match="ship' is a file, not a class folder"):
        load_cifar10(writable_folder)


def test_missing_dataset_with_download_off_says_so(tmp_path):
    with pytest.raises(DatasetError, match="download is off; put a copy there"):
        load_cifar10(tmp_path, download=False)


def test_empty_class_folder(writable_folder):
    for file in Path(writable_folder, "test", "cat").iterdir():
        file.unlink()
    with pytest.raises(DatasetError, match="class folder .*cat' is empty"):
        load_cifar10(writable_folder)


def test_unreadable_image(writable_folder):
    bad = Path(writable_folder, "train", "ship", "0003.png")
    bad.write_text("this is not an image")
    with pytest.raises(DatasetError, match="0003.png' is not a readable image"):
        load_cifar10(writable_folder)


def test_image_of_another_size_is_refused(writable_folder):
    path = Path(writable_folder, "test", "frog", "0001.png")
    cv2.imwrite(str(path), np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(
        DatasetError, match="is 48x64 pixels but CIFAR-10 images are 32x32"
    ):
        load_cifar10(writable_folder)


def test_grey_and_rgba_images_are_converted_to_rgb(writable_folder):
    grey = Path(writable_folder, "train", "airplane", "0000.png")
    cv2.imwrite(str(grey), np.full((32, 32), 77, np.uint8))
    rgba = Path(writable_folder, "train", "airplane", "0001.png")
    cv2.imwrite(str(rgba), np.full((32, 32, 4), 200, np.uint8))
    arrays = load_cifar10(writable_folder)
    assert (arrays.train_images[0] == 77).all()
    assert (arrays.train_images[1] == 200).all()


def _torchvision_folder(root: Path, synthetic) -> Path:
    """A folder in torchvision's format, made from the synthetic set."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": synthetic.train_images[:10].transpose(0, 3, 1, 2).reshape(10, -1),
            "labels": synthetic.train_labels[:10].tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list(CIFAR10_CLASSES)})
    )
    return root


def test_corrupted_torchvision_batch(tmp_path, synthetic):
    root = _torchvision_folder(tmp_path, synthetic)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated
    with pytest.raises(
        DatasetError, match="incomplete or corrupted.*delete that folder"
    ):
        load_cifar10(root)


def test_subset_holds_every_class(image_folder):
    arrays = load_cifar10(image_folder)  # listed class by class
    images, labels = data.take_subset(arrays.train_images, arrays.train_labels, 50)
    assert len(images) == 50 and len(np.unique(labels)) >= 8
    again, _ = data.take_subset(arrays.train_images, arrays.train_labels, 50)
    assert np.array_equal(images, again)


def test_validation_split_is_drawn_from_every_class(image_folder):
    _, validation, _ = get_data_loaders(
        batch_size=8, num_workers=0, data_dir=image_folder, validation_size=50
    )
    assert len(np.unique(validation.dataset.labels.numpy())) >= 8


def test_a_changed_folder_replaces_its_cache_and_leaves_others(
    writable_folder, image_folder
):
    caches = Path(os.environ["CIFAR_LIB_CACHE_DIR"])
    load_cifar10(image_folder)
    load_cifar10(writable_folder)
    before = set(caches.glob("imagefolder-*.npz"))
    unreadable = caches / "imagefolder-0123456789abcdef.npz"  # as named before
    unreadable.write_bytes(b"old")
    assert len(before) >= 2
    changed = next(Path(writable_folder, "train", "cat").iterdir())
    os.utime(changed, ns=(1, 1))  # as a new copy of the data would
    data._MEMORY_CACHE.clear()
    assert len(load_cifar10(writable_folder).train_images) == 300
    after = set(caches.glob("imagefolder-*.npz"))
    assert len(after) == len(before)  # one replaced, none added
    assert len(after - before) == 1
    assert all(path.exists() for path in after)
    assert not unreadable.exists()


def test_a_broken_cache_is_rebuilt(image_folder):
    load_cifar10(image_folder)
    cache = next(Path(os.environ["CIFAR_LIB_CACHE_DIR"]).glob("imagefolder-*.npz"))
    cache.write_bytes(b"")
    data._MEMORY_CACHE.clear()
    assert len(load_cifar10(image_folder).train_images) == 300


def test_a_folder_inside_a_class_folder_is_one_sentence(writable_folder):
    Path(writable_folder, "train", "cat", "extra").mkdir()
    with pytest.raises(DatasetError, match="extra' cannot be read"):
        load_cifar10(writable_folder)
