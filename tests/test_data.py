import numpy as np
import pytest

from harden.core.errors import DataError
from harden.ingest.data.sources import load_images, stratified_split

from .conftest import TINY_CONTRACT, synthetic_images

C = TINY_CONTRACT


def _npz(tmp_path, x, y, name="d.npz"):
    p = tmp_path / name
    np.savez(p, x=x, y=y)
    return p


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    x, y = synthetic_images(200, 0)
    data = load_images(_npz(tmp_path, x, y), C, "clean")
    tune, held = stratified_split(data, 0.2, seed=3)
    again, _ = stratified_split(data, 0.2, seed=3)
    assert len(tune) == 160 and len(held) == 40
    assert np.array_equal(tune.y, again.y) and tune.sha256 == again.sha256
    assert np.bincount(held.y).tolist() == [10, 10, 10, 10]
    other, _ = stratified_split(data, 0.2, seed=4)
    assert other.sha256 != tune.sha256


def test_wrong_size_and_channels_are_refused(tmp_path):
    x, y = synthetic_images(8, 0, size=32)
    with pytest.raises(DataError, match="16x16x3"):
        load_images(_npz(tmp_path, x, y), C, "data.clean")
    x, y = synthetic_images(8, 0)
    with pytest.raises(DataError, match="16x16x3"):
        load_images(_npz(tmp_path, x[..., :1], y), C, "data.clean")


def test_labels_outside_classes_and_empty_and_dtype(tmp_path):
    x, y = synthetic_images(8, 0)
    with pytest.raises(DataError, match="4 classes"):
        load_images(_npz(tmp_path, x, y + 3), C, "data.clean")
    with pytest.raises(DataError, match="no images"):
        load_images(_npz(tmp_path, x[:0], y[:0]), C, "data.clean")
    with pytest.raises(DataError, match="uint8"):
        load_images(_npz(tmp_path, x.astype(np.float32), y), C, "data.clean")


def test_unreadable_and_missing_keys(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_images(bad, C, "data.clean")
    p = tmp_path / "k.npz"
    np.savez(p, images=np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="'x'"):
        load_images(p, C, "data.clean")


def test_image_folder_source(tmp_path):
    from PIL import Image

    x, y = synthetic_images(8, 0)
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "imgs" / C.labels[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    data = load_images(tmp_path / "imgs", C, "data.clean")
    assert len(data) == 8 and sorted(data.y.tolist()) == sorted(y.tolist())


def test_class_with_one_image_cannot_be_split(tmp_path):
    x, y = synthetic_images(9, 0)
    data = load_images(_npz(tmp_path, x, y), C, "clean")
    with pytest.raises(DataError, match="class 1 has 1 image"):
        stratified_split(data.subset(np.array([0, 4, 8, 1, 2, 6]), "t"), 0.3, 0)
