"""The benchmark's offline tasks: shapes, label ranges, split disjointness, determinism, derivations."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mdamerge.errors import ConfigError
from mdamerge.zoo import tasks as T

QUICK = ["mnist", "fashion", "letters", "digits8x8"]


def hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x}


def check_task(data: T.TaskData) -> None:
    assert data.num_classes == len(data.class_names) >= 2
    for split in T.SPLIT_NAMES:
        x, y = data.split(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.ndim == 4 and x.shape[1:] == (1, 28, 28) and len(x) == len(y) > 0
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
    # every class is represented in training and test
    assert set(data.train[1].tolist()) == set(range(data.num_classes))
    assert set(data.test[1].tolist()) == set(range(data.num_classes))
    tr, va, te = (hashes(data.split(s)[0]) for s in T.SPLIT_NAMES)
    assert not (tr & te) and not (tr & va) and not (va & te), f"{data.name}: splits share images"


def test_suites_are_nested_and_sized():
    s8, s14, s20 = (T.SUITES[k] for k in ("tasks8", "tasks14", "tasks20"))
    assert (len(s8), len(s14), len(s20)) == (8, 14, 20)
    assert s14[:8] == s8 and s20[:14] == s14
    assert len(set(s20)) == 20 and set(s20) <= set(T.TASKS)
    assert len(T.SUITES["tiny3"]) == 3 and set(T.SUITES["tiny3"]) <= set(s8)


@pytest.mark.parametrize("name", QUICK)
def test_task_shapes_labels_and_disjoint_splits(name):
    check_task(T.load_task(name))


@pytest.mark.slow
def test_all_twenty_tasks_load():
    for name in T.SUITES["tasks20"]:
        check_task(T.load_task(name))


def test_loading_is_deterministic_and_seeded():
    T.load_task.cache_clear()
    first = T.load_task("letters", seed=0)
    T.load_task.cache_clear()
    T.glyph_bank.cache_clear()
    again = T.load_task("letters", seed=0)
    other = T.load_task("letters", seed=1)
    for split in T.SPLIT_NAMES:
        assert torch.equal(first.split(split)[0], again.split(split)[0])
        assert torch.equal(first.split(split)[1], again.split(split)[1])
    assert not torch.equal(first.test[0], other.test[0])
    m0, m1 = T.load_task("mnist", 0), T.load_task("mnist", 1)
    assert not torch.equal(m0.test[1], m1.test[1])


def test_mnist_splits_partition_the_5000_digits():
    data = T.load_task("mnist")
    sizes = [len(data.split(s)[1]) for s in T.SPLIT_NAMES]
    assert sum(sizes) == 5000
    all_images = hashes(torch.cat([data.train[0], data.val[0], data.test[0]]))
    assert len(all_images) > 4990  # a handful of exact duplicates exist in the raw data at most


def test_derived_tasks_transform_their_source():
    mnist = T.load_task("mnist")
    rot = T.load_task("mnist_rot90")
    assert torch.equal(rot.test[0], torch.rot90(mnist.test[0], 1, dims=(2, 3)))
    assert torch.equal(rot.test[1], mnist.test[1])
    assert torch.equal(T.load_task("mnist_inverted").val[0], 1.0 - mnist.val[0])
    assert torch.equal(T.load_task("mnist_parity").train[1], mnist.train[1] % 2)
    low = T.load_task("mnist_low")
    keep = mnist.test[1] < 5
    assert torch.equal(low.test[0], mnist.test[0][keep]) and torch.equal(low.test[1], mnist.test[1][keep])

    fashion = T.load_task("fashion")
    coarse = T.load_task("fashion_coarse")
    expected = torch.tensor([0, 1, 0, 0, 0, 2, 0, 2, 3, 2])[fashion.test[1]]
    assert torch.equal(coarse.test[1], expected) and coarse.class_names[2] == "footwear"
    tops = T.load_task("fashion_tops")
    names = [fashion.class_names[i] for i in fashion.test[1][torch.isin(fashion.test[1], torch.tensor([0, 2, 3, 4, 6]))]]
    assert [tops.class_names[i] for i in tops.test[1]] == names

    orient = T.load_task("fashion_orientation")
    for i in range(20):  # undoing the labelled rotation gives back the source image
        k = int(orient.test[1][i])
        assert torch.equal(torch.rot90(orient.test[0][i], -k, dims=(1, 2)), fashion.test[0][i])
    assert set(orient.test[1].tolist()) == {0, 1, 2, 3}

    digits = T.load_task("digits8x8")
    assert torch.equal(T.load_task("digits8x8_rot180").test[0], torch.rot90(digits.test[0], 2, dims=(2, 3)))
    # the upsampled 8x8 digits sit in a 20x20 box with a 4-pixel empty margin, like MNIST
    assert float(digits.train[0][:, :, :4].abs().max()) == 0.0 and float(digits.train[0][:, :, :, 24:].abs().max()) == 0.0


def test_test_images_never_appear_in_training_of_sibling_tasks():
    test_mnist = hashes(T.load_task("mnist").test[0])
    for sibling in ("mnist_parity", "mnist_low"):
        assert not test_mnist & hashes(T.load_task(sibling).train[0])
    test_fashion = hashes(T.load_task("fashion").test[0])
    assert not test_fashion & hashes(T.load_task("fashion_tops").train[0])
    assert not test_fashion & hashes(T.load_task("fashion_coarse").val[0])


def test_pretraining_corpus_is_disjoint_from_the_tasks():
    chars = T.pretraining_chars()
    assert len(chars) >= 80
    assert not set(chars) & set(T.UPPER + T.LOWER + "0123456789")
    x, y, k = T.pretraining_data(300, seed=0)
    assert x.shape == (300, 1, 28, 28) and int(y.max()) < k == len(chars)
    assert not hashes(x) & hashes(T.load_task("letters").test[0])
    x2, y2, _ = T.pretraining_data(300, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_rendered_labels_match_the_drawn_glyph():
    # Independent check of the labels: a clean glyph correlates best with its own class's clean glyph.
    bank, present = T.glyph_bank(T.UPPER, ("dejavu-sans",))
    assert bool(present.all())
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(26)
    calm = T.Jitter(rotation_deg=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0, stroke=0.0)
    imgs = T.render_glyphs(T.UPPER, ("dejavu-sans",), idx, torch.zeros(26, dtype=torch.long), gen, calm)
    ref = torch.nn.functional.avg_pool2d(bank[:, 0].unsqueeze(1), 2).flatten(1)
    sims = torch.nn.functional.normalize(imgs.flatten(1), dim=1) @ torch.nn.functional.normalize(ref, dim=1).T
    assert torch.equal(sims.argmax(dim=1), idx)


def test_unknown_names_raise_with_a_hint():
    with pytest.raises(ConfigError, match="unknown task 'mnits'.*did you mean 'mnist'"):
        T.load_task("mnits")
    with pytest.raises(ConfigError, match="unknown suite or task 'tasks9'.*did you mean"):
        T.resolve_tasks("tasks9")
    with pytest.raises(ConfigError, match="unknown split 'tset'"):
        T.load_task("mnist").split("tset")
    assert T.resolve_tasks("mnist, fashion") == ["mnist", "fashion"]


def test_missing_fashion_files_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MDAMERGE_FASHION_DIR", str(tmp_path))
    T._fashion.cache_clear()
    try:
        with pytest.raises(T.DataUnavailableError, match="train-images-idx3-ubyte.gz is missing: run 'make data'"):
            T._fashion()
    finally:
        monkeypatch.delenv("MDAMERGE_FASHION_DIR")
        T._fashion.cache_clear()
