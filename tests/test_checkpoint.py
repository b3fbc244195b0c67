"""Checkpoints: atomic writes, checksums that catch what torch.load does not."""
import os

import numpy as np
import pytest
import torch

from kdharness.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    return {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3, "best_acc": 51.5}


def test_round_trip_keeps_mdistiller_layout(tmp_path):
    path = tmp_path / "latest"
    save_checkpoint(_state(), str(path))
    raw = torch.load(path, weights_only=False)  # still a plain torch file with "model"
    assert torch.equal(raw["model"]["w"], _state()["model"]["w"])
    loaded = load_checkpoint(str(path))
    assert loaded["epoch"] == 3 and "_sha256" not in loaded
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_flipped_byte_inside_a_tensor_is_detected(tmp_path):
    path = tmp_path / "latest"
    save_checkpoint(_state(), str(path))
    data = bytearray(path.read_bytes())
    raw_tensor = torch.arange(1000, dtype=torch.float32).numpy().tobytes()
    offset = bytes(data).find(raw_tensor[400:432])
    assert offset > 0
    data[offset + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=False)  # torch itself does not notice ...
    with pytest.raises(CheckpointError, match="corrupt"):  # ... we do
        load_checkpoint(str(path))


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "latest"
    save_checkpoint(_state(), str(path))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(str(path))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_plain_state_dict_without_checksum_loads(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(load_checkpoint(str(path))["w"], torch.ones(2))


UNPICKLED = []


def _record_unpickling(marker):
    UNPICKLED.append(marker)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_unpickling, ("ran",))


def test_object_that_would_run_code_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "latest"
    save_checkpoint({"model": {"w": torch.ones(2)}, "payload": _RunsCodeWhenUnpickled()}, str(path))
    with pytest.raises(CheckpointError, match=r"(?s)could run code.*_record_unpickling"):
        load_checkpoint(str(path))
    assert UNPICKLED == []
    torch.load(path, weights_only=False)  # the file itself is fine: a trusting load does run it
    assert UNPICKLED == ["ran"]


def test_numpy_rng_state_and_scalars_load(tmp_path):
    path = tmp_path / "latest"
    rng = np.random.get_state()
    save_checkpoint({"rng": {"numpy": rng}, "best_acc": np.float64(51.5), "seen": np.arange(3)}, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded["rng"]["numpy"][0] == "MT19937" and np.array_equal(loaded["rng"]["numpy"][1], rng[1])
    assert loaded["best_acc"] == 51.5 and loaded["seen"].tolist() == [0, 1, 2]
