"""Training config files: YAML/TOML/JSON, dataclass validation, unknown keys named with their path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csi_training.config import (
    ConfigError,
    TrainConfig,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    yaml_cfg = _write(
        tmp_path,
        "a.yaml",
        """
seed: 7
model: {width: full, embedding_dim: 128}
loss: {mining: semi_hard, margin: 0.2}
data: {manifest: m.csv, works_per_batch: 8}
optim: {epochs: 3, lr: 0.002}
""",
    )
    toml_cfg = _write(
        tmp_path,
        "a.toml",
        """
seed = 7
[model]
width = "full"
embedding_dim = 128
[loss]
mining = "semi_hard"
margin = 0.2
[data]
manifest = "m.csv"
works_per_batch = 8
[optim]
epochs = 3
lr = 0.002
""",
    )
    a, b = load_config(yaml_cfg), load_config(toml_cfg)
    assert a == b
    assert a.model.width == "full" and a.loss.mining == "semi_hard" and a.optim.lr == 0.002
    assert a.data.versions_per_work == 4  # default kept


def test_round_trip_through_dict_and_json() -> None:
    cfg = config_from_dict({"data": {"manifest": "x.csv"}, "loss": {"ce_weight": 0.5}})
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    assert isinstance(again, TrainConfig)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"modle": {}}, "unknown key(s) modle"),
        ({"model": {"widht": "small"}}, "model.widht"),
        ({"loss": {"mining": "semihard"}}, "loss.mining: 'semihard' is not one of"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
        ({"optim": {"epochs": 2.5}}, "optim.epochs: expected an integer"),
        ({"amp": "yes"}, "amp: expected true/false"),
        ({"data": {"source": "manifest"}}, "data.manifest is required"),
        ({"data": {"manifest": "m.csv", "versions_per_work": 1}}, "versions_per_work must be >= 2"),
        ({"data": {"manifest": "m.csv", "val_works": 1.5}}, "val_works"),
        (
            {"data": {"manifest": "m.csv", "balance_collections": 1.5}},
            "balance_collections must be in [0, 1]",
        ),
        (
            {"data": {"manifest": "m.csv", "balance_collections": -0.1}},
            "balance_collections must be in [0, 1]",
        ),
        ({"loss": {"margin": -1}}, "loss.margin must be > 0"),
        ({"loss": {"ce_margin": 0.2}}, "ce_margin needs loss.ce_head: cosine"),
        ({"loss": {"ce_head": "cosine", "ce_margin": 1.5}}, "loss.ce_margin must be in [0, 1)"),
        ({"loss": {"ce_head": "arcface"}}, "loss.ce_head: 'arcface' is not one of"),
        ({"loss": {"ce_scale": 0}}, "loss.ce_scale must be > 0"),
        ({"frontend": {"sample_rate": 16000}}, "frontend.kind is required"),
        ({"model": "small"}, "model: expected a table"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(data: dict, needle: str) -> None:
    data = {"data": {"manifest": "m.csv"}, **data} if "data" not in data else data
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert needle in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = _write(tmp_path, "bad.toml", "seed = [\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_config(bad)
    other = _write(tmp_path, "c.ini", "[x]")
    with pytest.raises(ConfigError, match="unknown format"):
        load_config(other)
    typo = _write(tmp_path, "typo.yaml", "optim: {epochz: 3}\ndata: {manifest: m.csv}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*optim\.epochz"):
        load_config(typo)


def test_overrides_use_dotted_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", "data: {manifest: m.csv}\n")
    cfg = load_config(path, {"optim.epochs": 9, "loss.mining": "random", "out_dir": "x"})
    assert cfg.optim.epochs == 9 and cfg.loss.mining == "random" and cfg.out_dir == "x"


def test_config_diff_lists_nested_keys() -> None:
    a = {"model": {"width": "small", "embedding_dim": 256}, "seed": 1}
    b = {"model": {"width": "full", "embedding_dim": 256}, "seed": 1, "extra": 3}
    assert config_diff(a, b) == ["extra", "model.width"]
    assert config_diff(a, a) == []
