"""Offline loading of the benchmark's test splits: image folders, Hub-style Parquet, WebDataset
shards; split and configuration selection; clear errors."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mdamerge.errors import MergeError
from mdamerge.hf.classnames import CLASSNAMES
from mdamerge.hf.datasets import DATASETS, DatasetFormatError, find_dataset, load_test_split


def png(value: int, size=(6, 5), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel(dataset, i) -> int:
    return dataset.image(i).getpixel((0, 0))[0]


def test_every_task_has_a_hub_source_and_class_names():
    assert len(DATASETS) == 20 and set(DATASETS) == set(CLASSNAMES)
    assert DATASETS["svhn"].config == "cropped_digits" and DATASETS["food101"].split == "validation"


def test_image_folder_with_class_indices_and_class_names(tmp_path):
    root = tmp_path / "eurosat" / "test"
    for folder, value in (("3", 30), ("river", 80), ("Pasture_Land", 50)):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.png").write_bytes(png(value, mode="L"))
    ds = load_test_split("eurosat", data_root=tmp_path, cache_dir=str(tmp_path / "no-cache"))
    by_value = {pixel(ds, i): ds.labels[i] for i in range(len(ds))}
    assert by_value == {30: 3, 80: CLASSNAMES["eurosat"].index("river"), 50: CLASSNAMES["eurosat"].index("pasture land")}
    assert ds.image(0).mode == "RGB"  # grayscale files come out as RGB


def test_unknown_class_folder_and_out_of_range_labels_are_named(tmp_path):
    (tmp_path / "dtd" / "test" / "shiny").mkdir(parents=True)
    (tmp_path / "dtd" / "test" / "shiny" / "a.png").write_bytes(png(1))
    with pytest.raises(DatasetFormatError, match="class 'shiny' of task 'dtd'"):
        load_test_split("dtd", data_root=tmp_path)
    (tmp_path / "pcam" / "test" / "2").mkdir(parents=True)
    (tmp_path / "pcam" / "test" / "2" / "a.png").write_bytes(png(1))
    with pytest.raises(DatasetFormatError, match=r"dataset 'pcam' at .* has label 2 outside 0\.\.1"):
        load_test_split("pcam", data_root=tmp_path)


def write_parquet(path, images, labels, image_col="image", label_col="label"):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({image_col: [{"bytes": b, "path": None} for b in images], label_col: labels})
    pq.write_table(table, path, row_group_size=2)


def test_hub_parquet_layout_picks_the_test_split_and_the_configuration(tmp_path):
    repo = tmp_path / "ufldl-stanford" / "svhn"  # data_root/<org>/<name>, as the Hub names it
    write_parquet(repo / "cropped_digits" / "test-00000-of-00002.parquet", [png(1), png(2), png(3)], [1, 2, 3])
    write_parquet(repo / "cropped_digits" / "test-00001-of-00002.parquet", [png(4)], [4])
    write_parquet(repo / "cropped_digits" / "train-00000-of-00001.parquet", [png(9)], [9])
    write_parquet(repo / "full_numbers" / "test-00000-of-00001.parquet", [png(7)], [7])
    ds = load_test_split("svhn", data_root=tmp_path)
    assert ds.labels == [1, 2, 3, 4]
    assert [pixel(ds, i) for i in (3, 0, 2, 1)] == [4, 1, 3, 2]  # row groups are read on demand, in any order


def test_parquet_column_variants(tmp_path):
    write_parquet(tmp_path / "cifar100" / "data" / "test-00000-of-00001.parquet", [png(5), png(6)], [99, 0],
                  image_col="img", label_col="fine_label")
    ds = load_test_split("cifar100", data_root=tmp_path)
    assert ds.labels == [99, 0] and pixel(ds, 0) == 5
    write_parquet(tmp_path / "pcam" / "test.parquet", [png(1), png(2)], [True, False])
    assert load_test_split("pcam", data_root=tmp_path).labels == [1, 0]
    write_parquet(tmp_path / "dtd" / "test.parquet", [png(1)], [0], image_col="picture")
    with pytest.raises(DatasetFormatError, match="no image column"):
        load_test_split("dtd", data_root=tmp_path)


def test_webdataset_shards(tmp_path):
    shard_dir = tmp_path / "clip-benchmark--wds_fer2013" / "test"
    shard_dir.mkdir(parents=True)
    with tarfile.open(shard_dir / "0.tar", "w") as tar:
        for key, (value, label) in enumerate([(10, 3), (20, 6), (30, 0)]):
            for ext, data in (("jpg", png(value)), ("cls", str(label).encode()), ("json", json.dumps({}).encode())):
                info = tarfile.TarInfo(f"s{key:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = load_test_split("fer2013", data_root=tmp_path)
    assert sorted(zip(ds.labels, [pixel(ds, i) for i in range(3)])) == [(0, 30), (3, 10), (6, 20)]


def test_missing_split_lists_every_place_it_looked(tmp_path):
    lookup = find_dataset("gtsrb", data_root=tmp_path, cache_dir=str(tmp_path / "hub"))
    assert lookup.dataset is None
    assert lookup.looked[:3] == [str(tmp_path / "gtsrb"), str(tmp_path / "tanganke" / "gtsrb"), str(tmp_path / "tanganke--gtsrb")]
    with pytest.raises(MergeError, match=r"dataset 'gtsrb' \(tanganke/gtsrb, split test\) not found; looked in: .*Hugging Face cache"):
        load_test_split("gtsrb", data_root=tmp_path, cache_dir=str(tmp_path / "hub"))
    with pytest.raises(MergeError, match="unknown task 'gtsrbb'"):
        find_dataset("gtsrbb")


def test_subset_keeps_labels_and_images_together(tmp_path):
    write_parquet(tmp_path / "mnist" / "test.parquet", [png(v) for v in (0, 10, 20, 30)], [0, 1, 2, 3])
    ds = load_test_split("mnist", data_root=tmp_path).subset([3, 1])
    assert ds.labels == [3, 1] and [pixel(ds, 0), pixel(ds, 1)] == [30, 10]
