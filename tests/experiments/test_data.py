"""The tasks' local data: a fixed digits split and a byte corpus from disk."""

import numpy as np
import pytest

from gradsmooth.experiments.data import DataError, load_digits_split, load_text


def test_digits_split_is_fixed():
    pytest.importorskip("sklearn")
    a, b = load_digits_split(), load_digits_split()
    assert a.x_train.shape == (1438, 8, 8) and a.x_test.shape == (359, 8, 8)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.max() <= 1.0 and a.x_train.dtype == np.float32


def test_stdlib_corpus_and_a_file(tmp_path):
    text = load_text(None, context=64, max_bytes=100_000)
    assert len(text.train) + len(text.val) == 100_000 and text.source.endswith("*.py")
    (tmp_path / "t.txt").write_text("héllo wörld\n" * 1000, encoding="utf-8")
    data = load_text(str(tmp_path / "t.txt"), context=32)
    assert data.train.dtype == np.uint8 and len(data.val) == int(0.1 * (len(data.train) + len(data.val)))


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00" * 1000)
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_text(str(tmp_path / "bin"), context=8)
    (tmp_path / "blank").write_text("  \n\n")
    with pytest.raises(DataError, match="is empty"):
        load_text(str(tmp_path / "blank"), context=8)
    with pytest.raises(DataError, match="does not exist"):
        load_text(str(tmp_path / "nope"), context=8)
    with pytest.raises(DataError, match="'.*' is a directory, not a file"):
        load_text(str(tmp_path), context=8)


def test_digits_validation_is_held_out_of_the_training_part():
    pytest.importorskip("sklearn")
    plain, split = load_digits_split(), load_digits_split(val_fraction=0.2)
    np.testing.assert_array_equal(plain.y_test, split.y_test)  # the same test split
    assert plain.x_val is None and split.x_val.shape == (288, 8, 8) and split.x_train.shape == (1150, 8, 8)
    both = np.concatenate([split.x_train, split.x_val]).reshape(len(plain.x_train), -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, plain.x_train.reshape(len(plain.x_train), -1)))
    np.testing.assert_array_equal(split.y_val, load_digits_split(val_fraction=0.2).y_val)  # fixed
    with pytest.raises(ValueError, match="val_fraction should be in \\[0, 1\\) but is: 1.5"):
        load_digits_split(val_fraction=1.5)


def test_text_test_part_follows_validation():
    plain = load_text(None, context=64, max_bytes=100_000)
    split = load_text(None, context=64, max_bytes=100_000, test_fraction=0.1)
    assert plain.test is None and len(split.test) == 10_000 and len(split.val) == 10_000
    np.testing.assert_array_equal(split.test, plain.val)  # test is the last part
    assert len(split.train) + len(split.val) + len(split.test) == 100_000
