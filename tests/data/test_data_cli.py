"""``python -m framer.data``: info on empty and populated data roots, clean user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from framer.data.__main__ import collect_info, main
from framer.data.splits import PAPER_SPLITS


def _run(*args, data_dir):
    env = {**os.environ, "FRAMER_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "framer.data", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_info_subprocess_on_an_empty_data_dir_reports_missing_files(tmp_path):
    result = _run("info", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert str(tmp_path / "raw" / "megnet.json.zip") in out and "MISSING" in out
    assert "jdft_3d-8-18-2021.json.zip" in out and "bulk_megnet_train.pkl" not in out
    assert "python -m framer.data download --dataset megnet" in out
    for paper in PAPER_SPLITS.values():
        for fingerprint in paper.fingerprints.values():
            assert fingerprint in out  # expected fingerprints, regenerated from the algorithm
    assert "MISMATCH" not in out and "regenerated = published" in out
    assert "Traceback" not in result.stderr


def test_info_counts_present_files(megnet_raw, bulk_raw, data_dir, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "entries: 53 (published: 69239)" in out
    assert "filtered entries: 50" in out
    assert "paper split not applicable" in out  # 53 entries cannot hold the 60000/5000/4239 split
    assert "split sizes (pre-split pickles): 12/4/4" in out
    report, errors = collect_info()
    assert errors == []
    assert report["datasets"]["megnet"]["targets"]["gap"]["filtered_entries"] == 50
    assert report["datasets"]["dft_3d_2021"]["present"] is False


def test_info_json_and_corrupt_file_exit_code(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "megnet.json.zip").write_bytes(b"PK\x03\x04 truncated")
    result = _run("info", "--json", data_dir=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert "not a valid zip" in report["datasets"]["megnet"]["error"]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "megnet.json.zip" in lines[-1]
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_non_zero(tmp_path):
    result = _run("download", "--dataset", "nope", data_dir=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr
