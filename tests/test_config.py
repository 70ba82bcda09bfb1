"""Config layering, validation messages, and every packaged preset."""

import pytest

from vjepa_adapt.config import (
    ConfigError,
    PipelineConfig,
    config_hash,
    load_config,
    packaged_presets,
    parse_override,
)


def test_every_packaged_preset_validates():
    names = packaged_presets()
    assert {"demo", "vitl-256", "vitg-384"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, PipelineConfig)


def test_real_presets_point_at_hub_weights():
    assert load_config("vitl-256").model.weights == "facebook/vjepa2-vitl-fpc64-256"
    g = load_config("vitg-384")
    assert g.model.weights == "facebook/vjepa2-vitg-fpc64-384" and g.data.size == 384


def test_layering_defaults_yaml_overrides(tmp_path):
    y = tmp_path / "exp.yaml"
    y.write_text("probe:\n  lr: 0.01\n  epochs: 3\ntrain:\n  steps: 50\n  warmup_steps: 5\n")
    cfg = load_config(str(y), ["probe.epochs=7", "run.seed=3"])
    assert cfg.probe.lr == 0.01  # from YAML
    assert cfg.probe.epochs == 7  # override beats YAML
    assert cfg.probe.weight_decay == 0.05  # schema default
    assert cfg.run.seed == 3 and cfg.train.steps == 50


def test_override_parsing():
    assert parse_override("probe.lr=1e-3") == (["probe", "lr"], 0.001)
    assert parse_override("train.l2_anchor=[0, 0.1]") == (["train", "l2_anchor"], [0, 0.1])
    assert parse_override("model.weights=null") == (["model", "weights"], None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("probe.lr")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("probe.lrr=1", "probe.lrr: unknown key (allowed: kind, lr,"),
        ("probe.kind=mlp", "probe.kind: Input should be 'attentive' or 'linear'"),
        ("probe.lr=fast", "probe.lr: Input should be a valid number"),
        ("trian.steps=3", "trian: unknown key"),
        ("train.warmup_steps=999", "train.warmup_steps: 999 exceeds train.steps=150"),
        ("tag.backend=openai", "tag.base_url: required when tag.backend=openai"),
        ("data.split_ratios=[0.6,0.3,0.3]", "data.split_ratios: must be three positive shares summing to 1"),
        ("data.num_frames=15", "data.num_frames: 15 must be even"),
    ],
)
def test_bad_values_give_one_line_naming_the_field(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config("demo", [override])
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_stage_list_must_add_up():
    with pytest.raises(ConfigError, match="train.stages: stage steps sum to 30"):
        load_config("demo", ["train.steps=40", "train.warmup_steps=0",
                             "train.stages=[{name: a, steps: 10}, {name: b, steps: 20}]"])
    with pytest.raises(ConfigError, match="unknown data stream"):
        load_config("demo", ["train.stages=[{name: a, steps: 200, mixture: {rawz: 1.0}}]"])


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config("demo"), load_config("demo")
    assert config_hash(a.probe) == config_hash(b.probe)
    c = load_config("demo", ["probe.lr=0.001"])
    assert config_hash(a.probe) != config_hash(c.probe)
    assert config_hash(a.motion) == config_hash(c.motion)
