"""Train/val/test splits: the exact ALIGNN/Matformer/Crystalformer algorithm, seeded random splits, and fingerprints.

The paper splits are regenerated, not shipped: :func:`paper_split` reproduces ``get_id_train_val_test`` bit for bit
(CPython's ``random.seed(123); random.shuffle``; the validation slice is taken from the *end* of the shuffled list,
so when ``int()`` floors leave a remainder the middle entries belong to no split). Positions index the list *after*
missing targets were filtered out. :data:`PAPER_SPLITS` holds the published sizes and SHA-256 fingerprints
(``sha256(np.asarray(indices, '<i8').tobytes())``) that the regenerated splits must match.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
PAPER_SPLIT_SEED = 123


def split_fingerprint(indices: Sequence[int] | np.ndarray) -> str:
    """SHA-256 of the indices as little-endian int64 (docs/data.md, "Fingerprints")."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def id_fingerprint(ids: Sequence[str]) -> str:
    """SHA-256 of newline-joined ids, for splits defined by id lists (pickled moduli splits, custom split files)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def paper_split(
    total_size: int,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    split_seed: int = PAPER_SPLIT_SEED,
) -> dict[str, np.ndarray]:
    """Positions (int64 arrays, in split order) of the train/val/test entries among ``total_size``, exactly as
    ALIGNN/Matformer/Crystalformer compute them: a count that is None (or 0, as in the original) is
    ``int(ratio * total_size)`` with the original's ratios (val and test 0.1, train ``1 - 0.1 - 0.1``), and
    ``split_seed`` seeds CPython's global ``random`` for the shuffle (the papers use 123)."""
    n_train = n_train or int((1 - 0.1 - 0.1) * total_size)
    n_test = n_test or int(0.1 * total_size)
    n_val = n_val or int(0.1 * total_size)
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(
            f"split of {total_size} entries gives an empty part (train {n_train}, val {n_val}, test {n_test})"
        )
    if n_train + n_val + n_test > total_size:
        raise ValueError(
            f"split sizes train {n_train} + val {n_val} + test {n_test} = {n_train + n_val + n_test} exceed "
            f"the {total_size} available entries"
        )
    ids = list(np.arange(total_size))
    state = random.getstate()  # the original reseeds the *global* generator; callers keep their random state
    try:
        random.seed(split_seed)
        random.shuffle(ids)
    finally:
        random.setstate(state)
    parts = {"train": ids[:n_train], "val": ids[-(n_val + n_test) : -n_test], "test": ids[-n_test:]}
    return {name: np.asarray(part, dtype=np.int64) for name, part in parts.items()}


def random_split(
    total_size: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 123
) -> dict[str, np.ndarray]:
    """Seeded random split that uses every entry (for custom and generated data sets).

    Sizes are ``round(fraction * N)`` for val and test (at least one each when N >= 3 and the fraction is
    positive); train takes the rest. Positions are in permutation order.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {tuple(fractions)}")
    total = float(sum(fractions))
    train_f, val_f, test_f = (f / total for f in fractions)
    sizes = []
    for frac in (val_f, test_f):
        n = round(frac * total_size)
        if frac > 0 and total_size >= 3:
            n = max(n, 1)
        sizes.append(n)
    n_val, n_test = sizes
    n_train = total_size - n_val - n_test
    if train_f > 0 and n_train < 1:
        raise ValueError(f"cannot split {total_size} entries into train/val/test fractions {tuple(fractions)}")
    perm = np.random.default_rng(seed).permutation(total_size).astype(np.int64)
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """Read a JSON split file ``{"train": [ids], "val": [ids], "test": [ids]}``; raises ValueError naming the file."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"split file {path} not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"split file {path} is not valid JSON ({err})") from err
    if not isinstance(content, dict) or not all(isinstance(content.get(k), list) for k in SPLIT_NAMES):
        raise ValueError(f'split file {path} must be a JSON object {{"train": [...], "val": [...], "test": [...]}}')
    extra = set(content) - set(SPLIT_NAMES)
    if extra:
        raise ValueError(f"split file {path} has unknown keys {sorted(extra)}; expected train, val, test")
    splits = {name: [str(i) for i in content[name]] for name in SPLIT_NAMES}
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for i in splits[name]:
            if i in seen:
                where = "twice in " + name if seen[i] == name else f"in both {seen[i]} and {name}"
                raise ValueError(f"split file {path}: id {i!r} appears {where}")
            seen[i] = name
    if not splits["train"]:
        raise ValueError(f"split file {path}: the train list is empty")
    return splits


@dataclass(frozen=True)
class PaperSplit:
    """Published split of one Crystalformer target set (docs/data.md, "Split sizes" and "Fingerprints")."""

    total_size: int  # N after filtering missing targets
    sizes: tuple[int, int, int]  # train, val, test
    counts: tuple[int | None, int | None, int | None]  # explicit n_train/n_val/n_test passed to the algorithm
    fingerprints: Mapping[str, str]  # position space
    raw_fingerprints: Mapping[str, str] = field(default_factory=dict)  # raw indices into the unfiltered file

    def generate(self) -> dict[str, np.ndarray]:
        return paper_split(self.total_size, *self.counts)

    def compare(self, splits: Mapping[str, np.ndarray], kept: np.ndarray) -> tuple[dict, dict, bool]:
        """Fingerprints of ``splits`` (positions) and of ``kept[splits]`` (raw indices: they also pin down *which*
        entries the filter dropped), and whether both equal the published ones."""
        fps = {name: split_fingerprint(idx) for name, idx in splits.items()}
        raw = {name: split_fingerprint(kept[idx]) for name, idx in splits.items()}
        return fps, raw, fps == dict(self.fingerprints) and raw == dict(self.raw_fingerprints)


PAPER_SPLITS: dict[str, PaperSplit] = {
    "megnet": PaperSplit(
        69239,
        (60000, 5000, 4239),
        (60000, 5000, 4239),
        {
            "train": "aa3f6cf477c360f496b4a9c2b63cb26787bb41ac6e485bbb11c83dc7507e3645",
            "val": "f3fab7ea3298d8acb4d183b699a4846b0496e6df4bf6c209fabc79204eddf40d",
            "test": "58788904d1994da1215f985a3db2043f7d6f34224e6843a2d54efce3cc1e0128",
        },
    ),
    "dft_3d_2021": PaperSplit(
        55723,
        (44578, 5572, 5572),
        (None, None, None),
        {
            "train": "94fea386f992e510c7fc0fd712ddd63099b464cc8a980aaf68a429cfe3c4a853",
            "val": "fc61c62e6b734893d10bae41e39fedaa4a7b1a030fa665ea7b8c9d5bca2c908b",
            "test": "c4224c9bee34a8cbd4ba8009e2a47012bfb3b42e84118090063770f28558c00a",
        },
    ),
    "dft_3d_2021-mbj_bandgap": PaperSplit(
        18172,
        (14537, 1817, 1817),
        (None, None, None),
        {
            "train": "3f98ab94a68210bfb336ee587d86c7753c2e2a88883c67d0b8dc5abf652e9905",
            "val": "4c3e019253570a766979fa9bd505948100fedbe7a88e9d0b9c21bb40278ab870",
            "test": "062168ad9bf18c2da46ea43878a4f7a6f44b2c80d3d066857368fa3378c0f3a2",
        },
        {
            "train": "32f6442317fd924ff9657da051ddb6da2d400403be6eb9cdb5f62838aa42af7e",
            "val": "7d2be5b2dbeab7fc7135239a37c4a621b80cec0b18918f2c8caa2d4eefd1fe14",
            "test": "d8ad45ae2935fb5d919d61e71b139d57e456b6aec79e5aff48d9ae0c8bc88f17",
        },
    ),
    "dft_3d_2021-ehull": PaperSplit(
        55371,
        (44296, 5537, 5537),
        (None, None, None),
        {
            "train": "59d39968e88091c151dfbea3b11950c02384b29ccc91a17ef007d00bb361a740",
            "val": "29955507d73396783d8fb19f720383fffe470e77b923dd0d2c3d8c0c6e6bec37",
            "test": "91b1b30b3715a0273c4c61a3b1273ec49f0d4e7182d5c55240b2f895fcd78e44",
        },
        {
            "train": "432b42d169da3342cb59ea42e85eb80657e16bf5fd1466b6fd8574d7ffccd5cf",
            "val": "2f0d0217d7cf96e451c6ca0ae21608d774486ea011e3349185293e414ce88873",
            "test": "5fc0f2e3e1b17abfe6bd4135a17871a6873fe8c171a83caca3015de5d9ee362d",
        },
    ),
}
for _key in ("megnet", "dft_3d_2021"):  # the filter keeps every entry: raw and position fingerprints coincide
    PAPER_SPLITS[_key] = replace(PAPER_SPLITS[_key], raw_fingerprints=PAPER_SPLITS[_key].fingerprints)

# Published (pre-split) moduli pickles: sizes only (docs/data.md, "Split sizes").
MODULI_SPLIT_SIZES = {"bulk_modulus": (4664, 393, 393), "shear_modulus": (4664, 392, 393)}
