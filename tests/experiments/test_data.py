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


def test_problems_are_every_pair_once_split_the_same_way_every_time():
    from gradsmooth.experiments.data import load_problems

    a, b = load_problems(), load_problems(digits=1, held_out=10)
    assert a.train.shape == (9000, 2) and a.val.shape == a.test.shape == (500, 2) and a.folder is None
    everything = np.concatenate([a.train, a.val, a.test])
    assert len({tuple(p) for p in everything}) == 10_000 and everything.min() == 0 and everything.max() == 99
    np.testing.assert_array_equal(a.val, load_problems().val)
    assert b.train.shape == (80, 2)
    for bad, message in [(dict(digits=0), "digits should be an integer in \\[1, 4\\] but is: 0"),
                         (dict(digits=2.0), "but is: 2.0"),
                         (dict(digits=1, held_out=50), "held_out should be an integer in \\[1, 49\\] .* but is: 50")]:
        with pytest.raises(ValueError, match=message):
            load_problems(**bad)


def test_problems_are_tokens_with_the_answer_least_significant_digit_first():
    from gradsmooth.experiments.data import EQUALS, PLUS, encode_problems

    prompts, answers = encode_problems(np.array([[12, 99], [5, 7]]), 2)
    np.testing.assert_array_equal(prompts, [[1, 2, PLUS, 9, 9, EQUALS], [0, 5, PLUS, 0, 7, EQUALS]])
    np.testing.assert_array_equal(answers, [[1, 1, 1], [2, 1, 0]])  # 111 and 012, read backwards


def test_the_new_tasks_batches_follow_the_seed():
    from gradsmooth.experiments.data import load_problems, train_batches

    digits = load_digits_split()
    x, y = next(train_batches("diffusion", digits, 5, 0, seed=3))
    x_vit, y_vit = next(train_batches("vit", digits, 5, 0, seed=3))
    np.testing.assert_array_equal(x, 2 * x_vit - 1) and np.testing.assert_array_equal(y, y_vit)
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == np.float32
    prompts, answers = next(train_batches("rl", load_problems(), 4, 0, seed=3))
    again = next(train_batches("rl", load_problems(), 4, 0, seed=3))
    assert prompts.shape == (4, 6) and answers.shape == (4, 3)
    np.testing.assert_array_equal(prompts, again[0])
