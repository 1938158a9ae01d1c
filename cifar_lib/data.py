"""CIFAR-10 from torchvision's download or from a local image folder, decoded once.

Taught in ``notebooks/01_data_and_augmentation.ipynb``.

Where the data comes from is decided by one folder: the ``data_dir`` argument,
else the environment variable ``CIFAR_LIB_DATA_DIR``, else ``./data``. That folder
may hold

* an image folder: ``train/<class>/*.png|jpg`` and ``test/<class>/*`` (the layout
  of cifar2png and of many public copies), or
* torchvision's ``cifar-10-batches-py/``, which is downloaded there if missing.

Either way the images are decoded once into uint8 arrays of shape (N, 32, 32, 3)
and kept in memory; decoded image folders are also cached on disk (``.npz`` under
``CIFAR_LIB_CACHE_DIR`` or ``~/.cache/cifar_lib``), so no epoch ever decodes a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cifar_lib.errors import DatasetError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# The constants the reference normalises with. The mean is the training set's
# per-channel mean; the "std" is a widely copied figure that is not the training
# set's std (about 0.247, 0.243, 0.261): notebook 01 computes both.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

DATA_DIR_ENV = "CIFAR_LIB_DATA_DIR"
CACHE_DIR_ENV = "CIFAR_LIB_CACHE_DIR"
IMAGE_SIZE = 32
LAYOUT_HELP = (
    "either torchvision's 'cifar-10-batches-py' folder or an image folder with "
    "train/<class>/*.png|jpg and test/<class>/*.png|jpg for the ten CIFAR-10 classes"
)


@dataclass
class CIFAR10Arrays:
    """Both splits as arrays: images uint8 (N, 32, 32, 3) RGB, labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # "image-folder", "torchvision" or "synthetic"
    location: str

    @property
    def classes(self) -> tuple[str, ...]:
        return CIFAR10_CLASSES


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder to read: the argument, else ``$CIFAR_LIB_DATA_DIR``, else ./data."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or "data"
    return Path(data_dir).expanduser()


_MEMORY_CACHE: dict[str, CIFAR10Arrays] = {}


def load_cifar10(
    data_dir: str | os.PathLike | None = None, download: bool = True
) -> CIFAR10Arrays:
    """Load both splits of CIFAR-10 as arrays (decoded once, then cached)."""
    root = resolve_data_dir(data_dir)
    key = str(root.resolve())
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    if (root / "train").exists() or (root / "test").exists():
        arrays = _load_image_folder(root)
    else:
        arrays = _load_torchvision(root, download)
    _MEMORY_CACHE[key] = arrays
    return arrays


# --- torchvision's format --------------------------------------------------------


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for folder in (path.resolve(), *path.resolve().parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_if_empty(folder: Path | None) -> None:
    """Remove ``folder`` if it holds folders only, no file (what a download that
    failed before writing anything leaves)."""
    if folder is None or not folder.is_dir():
        return
    if not any(path.is_file() or path.is_symlink() for path in folder.rglob("*")):
        shutil.rmtree(folder)


def _load_torchvision(root: Path, download: bool) -> CIFAR10Arrays:
    from torchvision.datasets import CIFAR10

    have_files = (root / "cifar-10-batches-py").is_dir()
    created = _first_missing(root)  # the download makes it, and its parents
    try:
        splits = [
            CIFAR10(str(root), train=train, download=download and not have_files)
            for train in (True, False)
        ]
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        if have_files:
            raise _corrupted(root, error) from None
        _remove_if_empty(created)  # a failed download leaves no empty folders behind
        raise DatasetError(
            f"CIFAR-10 is not in '{root}' and could not be downloaded ({error}); "
            f"put a copy there ({LAYOUT_HELP}), or pass --data-dir / set "
            f"{DATA_DIR_ENV} to the folder that holds one."
        ) from None
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
        if have_files:
            raise _corrupted(root, error) from None
        raise DatasetError(
            f"CIFAR-10 is not in '{root}' and download is off; put a copy there "
            f"({LAYOUT_HELP}), or allow the download."
        ) from None
    except Exception as error:  # a truncated pickle fails while unpickling
        raise _corrupted(root, error) from None
    train, test = splits
    return CIFAR10Arrays(
        train_images=np.ascontiguousarray(train.data, dtype=np.uint8),
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_images=np.ascontiguousarray(test.data, dtype=np.uint8),
        test_labels=np.asarray(test.targets, dtype=np.int64),
        source="torchvision",
        location=str(root.resolve()),
    )


def _corrupted(root: Path, error: Exception) -> DatasetError:
    return DatasetError(
        f"the torchvision CIFAR-10 files in '{root / 'cifar-10-batches-py'}' are "
        f"incomplete or corrupted ({type(error).__name__}: {error}); delete that "
        "folder and download again, or point --data-dir at a good copy."
    )


# --- image folders ---------------------------------------------------------------


def _list_image_folder(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Check the layout and list (file, label) per split, in a stable order. The
    files are path strings, not ``Path`` objects: with 60,000 of those (made, then
    each asked for its size and time) loading the cached JPEG copy took 0.68-0.75 s
    on this project's CPU, and 0.29-0.32 s with strings (5 rounds, taking turns)."""
    for split, other in (("train", "test"), ("test", "train")):
        if not (root / split).is_dir():
            raise DatasetError(
                f"'{root}' has no {split}/ folder beside {other}/; an image folder "
                f"needs both, as train/<class>/*.png and test/<class>/*.png."
            )
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        found = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        unknown = [name for name in found if name not in CIFAR10_CLASSES]
        missing = [name for name in CIFAR10_CLASSES if name not in found]
        if unknown or missing:
            problem = []
            if unknown:
                problem.append(f"unknown class folders {unknown}")
            if missing:
                problem.append(f"missing class folders {missing}")
            raise DatasetError(
                f"'{folder}' has {' and '.join(problem)}; it must hold exactly one "
                f"folder per CIFAR-10 class: {', '.join(CIFAR10_CLASSES)}."
            )
        files = []
        for label, name in enumerate(CIFAR10_CLASSES):
            class_dir = folder / name
            if not class_dir.is_dir():
                raise DatasetError(f"'{class_dir}' is a file, not a class folder.")
            # sorted by name: the order of the paths, without comparing Path
            # objects (about 1.5 s for 60,000 files on the GPU machine, profiled)
            prefix = os.path.join(class_dir, "")
            names = [
                prefix + name
                for name in sorted(os.listdir(class_dir))
                if not name.startswith(".")
            ]
            if not names:
                raise DatasetError(
                    f"the class folder '{class_dir}' is empty; every class needs "
                    "images."
                )
            files += [(path, label) for path in names]
        splits[split] = files
    return splits


def _decode(path: str | Path) -> np.ndarray:
    """One image as uint8 RGB (32, 32, 3). Grey or RGBA files are converted to RGB;
    any other size is refused, since resizing would silently change the data."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as error:  # a folder, or no permission to read
        raise DatasetError(
            f"'{path}' cannot be read ({error.strerror}); a class folder must hold "
            "only image files."
        ) from None
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if image is None:
        raise DatasetError(
            f"'{path}' is not a readable image; remove it or replace it with a "
            "PNG or JPEG file."
        )
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = image.shape[:2]
        raise DatasetError(
            f"'{path}' is {width}x{height} pixels but CIFAR-10 images are 32x32; "
            "resize your copy to 32x32 or remove the file."
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _cache_path(root: Path, listing: dict[str, list[tuple[str, int]]]) -> Path:
    """``imagefolder-<folder>-<content>.npz``: a digest of the folder's path, then
    one of its files' names, labels, sizes and modification times, so that a
    changed file makes a new cache (and ``_write_cache`` removes the folder's old
    one)."""
    folder = hashlib.sha1(str(root.resolve()).encode())
    digest = folder.copy()
    for split, files in listing.items():
        for path, label in files:
            stat = os.stat(path)
            name = os.path.basename(path)
            digest.update(f"{split}|{name}|{label}|{stat.st_size}|".encode())
            digest.update(str(stat.st_mtime_ns).encode())
    cache_dir = Path(
        os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cifar_lib"
    )
    return (
        cache_dir
        / f"imagefolder-{folder.hexdigest()[:8]}-{digest.hexdigest()[:16]}.npz"
    )


def _load_image_folder(root: Path) -> CIFAR10Arrays:
    listing = _list_image_folder(root)
    cache = _cache_path(root, listing)
    arrays = {}
    if cache.exists():
        try:
            with np.load(cache) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except Exception:  # truncated, empty or foreign: rebuilt below
            arrays = {}
        expected = {f"{s}_{k}" for s in ("train", "test") for k in ("images", "labels")}
        if set(arrays) != expected:
            arrays = {}
    if not arrays:
        # OpenCV releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for split, files in listing.items():
                images = list(pool.map(_decode, [path for path, _ in files]))
                arrays[f"{split}_images"] = np.stack(images)
                arrays[f"{split}_labels"] = np.array(
                    [label for _, label in files], dtype=np.int64
                )
        _write_cache(cache, arrays)
    return CIFAR10Arrays(**arrays, source="image-folder", location=str(root.resolve()))


def _write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Best effort: an unwritable cache folder only costs a decode next time.
    The same folder's caches of earlier contents (185 MB each for CIFAR-10) are
    removed, and caches named as before the folder's digest was in the name
    (``imagefolder-<content>.npz``): they would never be read again."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, cache)
        folder = cache.name.split("-")[1]
        for old in cache.parent.glob("imagefolder-*.npz"):
            parts = old.stem.split("-")
            if old != cache and (len(parts) == 2 or parts[1] == folder):
                old.unlink(missing_ok=True)
    except OSError:
        pass


def save_image_folder(
    root: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    split: str,
    extension: str = ".png",
) -> Path:
    """Write images in the ``split/<class>/NNNN.png`` layout (for tests and demos)."""
    root = Path(root)
    counters = dict.fromkeys(range(len(CIFAR10_CLASSES)), 0)
    for name in CIFAR10_CLASSES:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    for image, label in zip(images, labels, strict=True):
        label = int(label)
        path = (
            root / split / CIFAR10_CLASSES[label] / f"{counters[label]:04d}{extension}"
        )
        counters[label] += 1
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


# --- synthetic data for tests ----------------------------------------------------

_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [128, 128, 0],
        [0, 0, 128],
    ],
    dtype=np.float32,
)


def make_synthetic_cifar(
    train_per_class: int = 100, test_per_class: int = 20, seed: int = 0
) -> CIFAR10Arrays:
    """A learnable stand-in for CIFAR-10: class k is a square of colour k (even k)
    or a ring of colour k (odd k) at a random place, on a noisy grey background."""
    rng = np.random.default_rng(seed)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.normal(110, 30, size=(len(labels), 32, 32, 3))
        yy, xx = np.mgrid[0:32, 0:32]
        for index, label in enumerate(labels):
            cy, cx = rng.integers(10, 22, size=2)
            size = rng.integers(5, 9)
            if label % 2 == 0:
                mask = (abs(yy - cy) <= size) & (abs(xx - cx) <= size)
            else:
                radius = np.hypot(yy - cy, xx - cx)
                mask = (radius <= size) & (radius >= size - 3)
            images[index][mask] = _PALETTE[label] + rng.normal(0, 15, size=3)
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = split(train_per_class)
    test_images, test_labels = split(test_per_class)
    return CIFAR10Arrays(
        train_images,
        train_labels,
        test_images,
        test_labels,
        "synthetic",
        f"seed {seed}",
    )


# --- datasets and loaders --------------------------------------------------------


class ArrayDataset(Dataset):
    """Images held as a uint8 array, passed through an albumentations pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    # with alternating flip (AugmentationConfig.alternate_flip): which images this
    # epoch flips, set by choose_flips; None: the transform decides
    flipped: np.ndarray | None = None

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.flipped is not None and self.flipped[index]:
            image = np.ascontiguousarray(image[:, ::-1])
        return self.transform(image=image)["image"], self.labels[index]

    def choose_flips(self, seed: int, epoch: int) -> None:
        """Flip by hand the images that alternating flip flips in ``epoch`` (the
        transform then has no flip of its own; augment.build_train_transform)."""
        from cifar_lib.augment import alternate_flips

        self.flipped = alternate_flips(len(self.images), seed, epoch)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream (albumentations keeps its own)."""
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed % 2**32)


def _reseed_worker(worker_id: int) -> None:
    # Forked workers inherit one copy of the pipeline's random state, so without
    # this every worker would apply the same "random" augmentations.
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed())


def default_num_workers() -> int:
    """Worker processes for augmentation: none on a CPU-only machine, where they
    would take cores from the model; a few beside a GPU."""
    if not torch.cuda.is_available():
        return 0
    return min(4, os.cpu_count() or 1)


def make_loader(
    dataset: ArrayDataset,
    batch_size: int,
    train: bool,
    num_workers: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader whose order and augmentation are set by ``seed`` (see set_epoch)."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
        worker_init_fn=_reseed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make epoch ``epoch``'s order and augmentations a function of (seed, epoch)
    alone, so a resumed run sees exactly what an uninterrupted one would."""
    if hasattr(loader, "set_epoch"):  # speed.TensorBatchLoader
        loader.set_epoch(seed, epoch)
        return
    epoch_seed = seed * 100_003 + epoch
    loader.generator.manual_seed(epoch_seed)
    loader.dataset.reseed(epoch_seed)
    if loader.dataset.flipped is not None:
        loader.dataset.choose_flips(seed, epoch)


def take_subset(
    images: np.ndarray, labels: np.ndarray, count: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images drawn at random, the same ones every time (all of them
    when ``count`` is None). Not simply the first ``count``: an image folder lists
    the images class by class, so the first 2,000 would all be airplanes."""
    if count is None or count >= len(images):
        return images, labels
    chosen = np.sort(np.random.default_rng(0).permutation(len(images))[:count])
    return images[chosen], labels[chosen]


def get_data_loaders(
    batch_size: int = 128,
    num_workers: int | None = None,
    data_dir: str | os.PathLike | None = None,
    subset: int | None = None,
    validation_size: int = 0,
    seed: int = 0,
    augmentation=None,
    eval_batch_size: int | None = None,
    arrays: CIFAR10Arrays | None = None,
):
    """Train and test loaders as the reference builds them.

    Returns ``(train_loader, test_loader)``; with ``validation_size > 0`` that many
    training images, drawn at random (the same ones each time), are held out
    (unaugmented) and it returns
    ``(train_loader, validation_loader, test_loader)``, so model selection need
    not look at the test set. ``subset`` keeps N training images drawn at random.
    ``arrays`` skips loading (for synthetic data).
    """
    # Imported here: augment needs this module's constants.
    from cifar_lib.augment import build_test_transform, build_train_transform

    arrays = arrays if arrays is not None else load_cifar10(data_dir)
    images, labels = arrays.train_images, arrays.train_labels
    if validation_size:
        if not 0 < validation_size < len(images):
            raise ValueError("validation_size must be between 0 and the training size")
        order = np.random.default_rng(1).permutation(len(images))
        held, kept = np.sort(order[:validation_size]), np.sort(order[validation_size:])
        held_images, held_labels = images[held], labels[held]
        images, labels = images[kept], labels[kept]
    images, labels = take_subset(images, labels, subset)
    eval_batch_size = eval_batch_size or max(batch_size, 512)
    dataset = ArrayDataset(
        images, labels, build_train_transform(augmentation, seed=seed)
    )
    if augmentation is not None and augmentation.alternate_flip:
        dataset.choose_flips(seed, 0)
    train = make_loader(
        dataset, batch_size, train=True, num_workers=num_workers, seed=seed
    )
    test = make_loader(
        ArrayDataset(arrays.test_images, arrays.test_labels, build_test_transform()),
        eval_batch_size,
        train=False,
        num_workers=num_workers,
    )
    if not validation_size:
        return train, test
    validation = make_loader(
        ArrayDataset(held_images, held_labels, build_test_transform()),
        eval_batch_size,
        train=False,
        num_workers=num_workers,
    )
    return train, validation, test
