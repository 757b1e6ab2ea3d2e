"""The paper splits are regenerated bit-exactly (docs/data.md, "Fingerprints"), with no data present."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from framer.data.splits import (
    PAPER_SPLITS,
    id_fingerprint,
    paper_split,
    random_split,
    read_split_file,
    split_fingerprint,
)

# First entries of each split as listed in docs/data.md, "Fingerprints" (position space).
FIRST = {
    "megnet": {"train": [27831, 58056, 60863], "val": [24566, 16870, 42123], "test": [22274, 31381, 19400]},
    "dft_3d_2021": {"train": [45770, 5340, 6395], "val": [8987, 5323, 18355], "test": [37131, 8495, 54026]},
    "dft_3d_2021-mbj_bandgap": {"train": [8248, 3976, 10170]},
    "dft_3d_2021-ehull": {"train": [24684, 23785, 50393]},
}


@pytest.mark.parametrize("key", sorted(PAPER_SPLITS))
def test_paper_split_matches_published_fingerprints(key):
    paper = PAPER_SPLITS[key]
    splits = paper.generate()
    assert tuple(len(splits[s]) for s in ("train", "val", "test")) == paper.sizes
    for name, indices in splits.items():
        assert split_fingerprint(indices) == paper.fingerprints[name], f"{key}/{name}"
    for name, first in FIRST[key].items():
        assert splits[name][:3].tolist() == first


@pytest.mark.parametrize("key", sorted(PAPER_SPLITS))
def test_paper_split_parts_are_disjoint_and_leave_the_documented_remainder(key):
    paper = PAPER_SPLITS[key]
    splits = paper.generate()
    union = np.concatenate(list(splits.values()))
    assert len(np.unique(union)) == len(union)
    unused = sorted(set(range(paper.total_size)) - set(union.tolist()))
    assert len(unused) == (0 if key == "megnet" else 1)
    if key == "dft_3d_2021":
        assert unused == [11497]  # docs/data.md, "Split algorithm": the one dft_3d_2021 entry in no split


def test_megnet_and_dft3d_raw_fingerprints_equal_position_fingerprints():
    # Nothing is filtered for these sets, so the shipped raw-index arrays are the positions themselves.
    for key in ("megnet", "dft_3d_2021"):
        assert dict(PAPER_SPLITS[key].raw_fingerprints) == dict(PAPER_SPLITS[key].fingerprints)


def test_split_uses_stdlib_random_with_seed_and_restores_global_state():
    random.seed(999)
    expected_next = random.random()
    random.seed(999)
    paper_split(100)
    assert random.random() == expected_next
    # The shuffle is CPython's: a list of numpy ints and a list of ints shuffle identically.
    ids = list(range(100))
    random.seed(123)
    random.shuffle(ids)
    assert paper_split(100)["train"].tolist() == ids[:80]


def test_validation_slice_is_taken_from_the_end():
    splits = paper_split(1003)
    random.seed(123)
    ids = list(range(1003))
    random.shuffle(ids)
    assert splits["val"].tolist() == ids[-200:-100]
    assert splits["test"].tolist() == ids[-100:]
    assert len(splits["train"]) == 802  # ids[802] is in no split


def test_paper_split_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="exceed"):
        paper_split(100, n_train=60000, n_val=5000, n_test=4239)
    with pytest.raises(ValueError, match="empty"):
        paper_split(5)


def test_fingerprint_is_sha256_of_little_endian_int64():
    import hashlib

    idx = [3, 1, 2]
    assert split_fingerprint(idx) == hashlib.sha256(np.array(idx, dtype="<i8").tobytes()).hexdigest()
    assert split_fingerprint(np.array(idx, dtype=np.int32)) == split_fingerprint(idx)
    assert split_fingerprint([1, 2, 3]) != split_fingerprint(idx)
    assert id_fingerprint(["a", "b"]) != id_fingerprint(["b", "a"])


def test_random_split_uses_every_entry_and_is_seeded():
    a = random_split(64, (0.8, 0.1, 0.1), seed=5)
    b = random_split(64, (0.8, 0.1, 0.1), seed=5)
    c = random_split(64, (0.8, 0.1, 0.1), seed=6)
    assert {k: len(v) for k, v in a.items()} == {"train": 52, "val": 6, "test": 6}
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(64))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    tiny = random_split(3, (0.8, 0.1, 0.1), seed=0)
    assert [len(tiny[k]) for k in ("train", "val", "test")] == [1, 1, 1]


def test_read_split_file_validates(tmp_path):
    good = tmp_path / "split.json"
    good.write_text('{"train": ["a", "b"], "val": ["c"], "test": ["d"]}')
    assert read_split_file(good) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    overlap = tmp_path / "overlap.json"
    overlap.write_text('{"train": ["a"], "val": ["a"], "test": []}')
    with pytest.raises(ValueError, match="both train and val"):
        read_split_file(overlap)
    missing_key = tmp_path / "bad.json"
    missing_key.write_text('{"train": ["a"]}')
    with pytest.raises(ValueError, match="must be a JSON object"):
        read_split_file(missing_key)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        read_split_file(broken)


def test_citations_of_docs_data_md_name_its_sections():
    """Code cites the data facts by section title (docs/data.md and the title in quotes); every cited title exists."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    titles = {line[3:].strip() for line in (repo / "docs" / "data.md").read_text().splitlines() if line[:3] == "## "}
    cited = {}
    for path in [*repo.glob("framer/**/*.py"), *repo.glob("tests/**/*.py"), *repo.glob("conf/**/*.yaml")]:
        for quoted in re.findall(r'docs/data\.md, ((?:"[^"]+"(?: and )?)+)', path.read_text()):
            for title in re.findall(r'"([^"]+)"', quoted):
                cited.setdefault(title, path.relative_to(repo).as_posix())
    assert len(cited) >= 4
    assert not {title: path for title, path in cited.items() if title not in titles}
