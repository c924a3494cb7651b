"""Config tree: YAML recipes, ``base:`` inheritance, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from gare.config import (
    RECIPES_DIR,
    Config,
    ConfigError,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    merge_overrides,
    packaged_recipes,
    recipe_path,
    resolve_compat,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_the_paper_settings():
    cfg = load_config()
    assert cfg == resolve_compat(Config())  # release switches left null resolve to the compat mode (off)
    s = cfg.model.scorer
    assert (s.pool_temperature, s.eta, s.query, s.context, s.side, s.pooling) == (3.0, 1.0, "gap", "frames", "text",
                                                                                   "text")
    assert (s.psi.heads, s.psi.layers, s.psi.dropout, s.psi.log_sigma_head) == (1, 1, 0.3, False)
    assert cfg.model.temporal.kind == "seqTransf" and cfg.model.temporal.layers == 4
    L = cfg.loss
    assert (L.beta, L.lambda_eps, L.eps_truncate, L.lambda_dir, L.alpha, L.lambda_gs) == (1e-4, 0.01, 0.5, 0.01, 2.0,
                                                                                          0.0)
    assert (L.ib_anchor, L.ib_convention) == ("video", "sum")
    t = cfg.train
    assert (t.batch_size, t.epochs, t.lr, t.weight_decay, t.betas, t.adam_eps, t.warmup_ratio, t.grad_clip,
            t.seed) == (128, 5.0, 1e-4, 0.2, (0.9, 0.98), 1e-6, 0.1, 1.0, 42)


def test_overrides_are_parsed_and_typed():
    cfg = load_config(None, ["train.epochs=2", "model.scorer.psi.heads=2", "train.betas=[0.9, 0.99]",
                             "model.backbone.weights=null", "model.scorer.eta=-1", "train.resume=true",
                             "model.scorer.pool_temperature=1", "name=my run", "train.max_steps=50",
                             "data.options={split: 7k}"])
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.model.scorer.psi.heads == 2 and isinstance(cfg.model.scorer.psi.heads, int)
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.model.backbone.weights is None
    assert cfg.model.scorer.eta == -1.0
    assert cfg.train.resume is True
    assert cfg.model.scorer.pool_temperature == 1.0 and isinstance(cfg.model.scorer.pool_temperature, float)
    assert cfg.name == "my run"
    assert cfg.train.max_steps == 50
    assert cfg.data.options == {"split": "7k"}
    # untouched keys keep their defaults
    assert cfg.train.batch_size == 128 and cfg.model.scorer.psi.layers == 1


def test_yaml_file_then_overrides(tmp_path):
    path = _write(tmp_path / "run.yaml", "name: r\ntrain: {epochs: 3, batch_size: 32}\nmodel:\n  scorer:\n"
                                         "    pool_temperature: 2.0\n")
    cfg = load_config(path, ["train.epochs=7"])
    assert cfg.name == "r" and cfg.train.epochs == 7.0 and cfg.train.batch_size == 32
    assert cfg.model.scorer.pool_temperature == 2.0


def test_base_inheritance(tmp_path):
    _write(tmp_path / "grand.yaml", "name: grand\nloss: {alpha: 3.0}\ntrain: {seed: 1}\n")
    _write(tmp_path / "base.yaml", "base: grand.yaml\nname: base\nmodel:\n  scorer:\n    psi: {heads: 2}\n"
                                   "    pool_temperature: 5.0\ntrain: {epochs: 10}\n")
    child = _write(tmp_path / "sub" / "child.yaml", "base: ../base.yaml\nname: child\nmodel:\n  scorer:\n"
                                                    "    pool_temperature: 1.5\n")
    cfg = load_config(child, ["train.seed=9"])
    assert cfg.name == "child"
    assert cfg.model.scorer.pool_temperature == 1.5  # child wins
    assert cfg.model.scorer.psi.heads == 2  # sibling key in the parent's nested section is kept (deep merge)
    assert cfg.train.epochs == 10.0  # from the parent
    assert cfg.loss.alpha == 3.0  # from the grandparent
    assert cfg.train.seed == 9  # overrides beat every file


def test_base_cycle_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    path = _write(tmp_path / "c.yaml", "base: nothere.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*nothere.yaml"):
        load_config(path)


@pytest.mark.parametrize("override,key,suggestion", [
    ("model.scorer.pool_temprature=2", "model.scorer.pool_temprature", "model.scorer.pool_temperature"),
    ("trian.epochs=2", "trian", "train"),
    ("model.scorer.psi.haeds=2", "model.scorer.psi.haeds", "model.scorer.psi.heads"),
    ("loss.lamda_dir=0.1", "loss.lamda_dir", "loss.lambda_dir"),
])
def test_unknown_key_is_named_with_a_suggestion(override, key, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"unknown config key '{key}'" in msg
    assert f"did you mean '{suggestion}'?" in msg


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = _write(tmp_path / "x.yaml", "model:\n  temporal: {kind: meanP, layres: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.temporal\.layres' \(did you mean "
                                          r"'model\.temporal\.layers'\?\)"):
        load_config(path)


def test_unknown_key_without_a_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.zzzzqqq=1"])
    assert "did you mean" not in str(e.value)
    assert "valid keys here: backbone, compat, scorer, temporal" in str(e.value)


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "config key 'train.epochs' must be a number, got 'abc'"),
    ("model.scorer.psi.heads=1.5", "config key 'model.scorer.psi.heads' must be an integer, got 1.5"),
    ("model.scorer.psi.heads=true", "config key 'model.scorer.psi.heads' must be an integer"),
    ("train.resume=maybe", "config key 'train.resume' must be true or false, got 'maybe'"),
    ("train.max_steps=abc", "config key 'train.max_steps' must be an integer"),
    ("model.scorer=3", "config key 'model.scorer' must be a mapping"),
    ("train.betas=[1]", "config key 'train.betas' must be a list of 2 values"),
    ("train.betas=[0.9, x]", "config key 'train.betas[1]' must be a number"),
    ("data.options=5", "config key 'data.options' must be a mapping"),
    ("model.backbone.arch=[1, 2]", "config key 'model.backbone.arch' must be a string"),
])
def test_wrong_type_names_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("key,good,bad", [
    ("model.temporal.kind", "meanP", "lstm"),
    ("model.scorer.pooling", "mean", "max"),
    ("model.scorer.query", "text", "video"),
    ("model.scorer.context", "words", "audio"),
    ("model.scorer.side", "video", "both"),
    ("loss.ib_anchor", "text", "pair"),
    ("loss.ib_convention", "mean", "max"),
    ("train.precision", "bf16", "fp8"),
])
def test_choices_are_validated(key, good, bad):
    cfg = load_config(None, [f"{key}={good}"])
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == good
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    assert f"config key '{key}' must be one of" in str(e.value) and repr(bad) in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (["model.scorer.eta=0.5"], "model.scorer.eta"),
    (["model.scorer.pool_temperature=0"], "model.scorer.pool_temperature"),
    (["model.scorer.psi.stochastic=true"], "log_sigma_head"),
    (["train.batch_size=1"], "train.batch_size"),
    (["data.noise_fraction=1.0"], "data.noise_fraction"),
])
def test_value_ranges_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_stochastic_with_log_sigma_head_is_valid():
    cfg = load_config(None, ["model.scorer.psi.stochastic=true", "model.scorer.psi.log_sigma_head=true"])
    assert cfg.model.scorer.psi.stochastic


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config(tmp_path / "absent.yaml")
    bad = _write(tmp_path / "bad.yaml", "train: {epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    lst = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: top level must be a mapping"):
        load_config(lst)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="override 'train.epochs' must look like key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        apply_overrides({"train": {"epochs": 5}}, ["train.epochs.x=1"])


def test_merge_overrides_takes_strings_or_python_values_and_names_the_key():
    base = {"scorer": {"pool_temperature": 3.0, "psi": {"heads": 1}}}
    from_strings = merge_overrides(base, ["scorer.psi.heads=2", "backbone.arch=ViT-B-16"], ModelConfig)
    from_values = merge_overrides(base, {"scorer.psi.heads": 2, "backbone.arch": "ViT-B-16"}, ModelConfig)
    assert from_strings == from_values
    assert (from_values.scorer.psi.heads, from_values.backbone.arch, from_values.scorer.pool_temperature) == \
        (2, "ViT-B-16", 3.0)
    assert base == {"scorer": {"pool_temperature": 3.0, "psi": {"heads": 1}}}  # the input is not changed
    with pytest.raises(ConfigError, match="'model.scorer.psi.heads' must be an integer"):
        merge_overrides(base, {"scorer.psi.heads": "two"}, ModelConfig, prefix="model")
    with pytest.raises(ConfigError, match="unknown config key 'model.scorer.temprature'"):
        merge_overrides(base, {"scorer.temprature": 1.0}, ModelConfig, prefix="model")
    # a whole Config is also validated (choices and ranges)
    with pytest.raises(ConfigError, match="model.scorer.eta"):
        merge_overrides({}, ["model.scorer.eta=2"])
    assert merge_overrides({}, ["train.epochs=2"]) == load_config(None, ["train.epochs=2"])


def test_dict_round_trip():
    cfg = load_config(None, ["train.betas=[0.8, 0.9]", "model.scorer.psi.layers=2", "data.options={a: 1}"])
    d = config_to_dict(cfg)
    assert d["train"]["betas"] == [0.8, 0.9]  # lists, YAML/JSON friendly
    assert config_from_dict(d) == cfg


def test_packaged_recipe_loads_by_name_and_is_the_only_demo_recipe(tmp_path, monkeypatch):
    assert "demo" in packaged_recipes()
    packaged = RECIPES_DIR / "demo.yaml"
    assert recipe_path("demo") == recipe_path("demo.yaml") == packaged
    assert load_config("demo") == load_config(packaged) and load_config("demo").name == "demo"
    assert not (REPO / "configs" / "demo.yaml").exists()  # one demo recipe: the package's
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a folder of that name does not hide the recipe
    assert recipe_path("demo") == packaged
    _write(tmp_path / "demo.yaml", "name: local\n")  # a file the user names wins
    assert load_config("demo.yaml").name == "local"
    with pytest.raises(ConfigError, match=r"config file not found: dmeo \(packaged recipes, usable by name: .*demo"):
        load_config("dmeo")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_recipes_load(recipe):
    cfg = load_config(REPO / "configs" / recipe)
    assert isinstance(cfg, Config)
