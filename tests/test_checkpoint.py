"""Checkpoints: atomic writes, checksums that catch what torch.load does not."""
import os

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
