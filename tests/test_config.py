from pathlib import Path

import pytest

from harden.config.loading import load_pipeline
from harden.config.detect import DetectorSections
from harden.config.prune import ScorerMethods
from harden.config.repair import RepairSections
from harden.detect import DETECTORS
from harden.prune.scorers import SCORERS
from harden.repair import REPAIRS
from harden.config.schema import PipelineConfig
from harden.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_smoke_yaml_loads_and_resolves_paths(tiny_workspace):
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml")
    assert cfg.model.path == tiny_workspace / "model"
    assert cfg.data.clean.path.is_absolute() and cfg.data.clean.path.exists()
    assert cfg.stages.score.methods.clp.u == 1.0


def test_three_mistakes_reported_at_once_with_key_paths(tiny_workspace):
    bad = tiny_workspace / "bad.yaml"
    text = (tiny_workspace / "pipeline.yaml").read_text()
    text = text.replace("seed: 0", "seed: zero").replace("epochs: 2", "epocs: 2").replace("u: 1.0", "u: -1")
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_pipeline(bad)
    keys = [k for k, _ in err.value.problems]
    assert keys == ["seed", "stages.score.methods.clp.u", "stages.finetune.epocs"] or sorted(keys) == sorted(
        ["seed", "stages.score.methods.clp.u", "stages.finetune.epocs"])
    msg = str(err.value)
    assert str(bad) in msg and "did you mean 'epochs'" in msg


def test_missing_files_are_listed_with_their_keys(tiny_workspace):
    with pytest.raises(ConfigError) as err:
        load_pipeline(tiny_workspace / "pipeline.yaml", ["model.path=nope", "data.test.path=missing.npz"],
                      cwd=tiny_workspace)
    assert {k for k, _ in err.value.problems} == {"model.path", "data.test.path"}


def test_env_interpolation_with_default_and_missing(tiny_workspace, monkeypatch):
    y = tiny_workspace / "env.yaml"
    y.write_text((tiny_workspace / "pipeline.yaml").read_text()
                 .replace("path: model", "path: ${TINY_MODEL_DIR}")
                 .replace("path: test.npz", "path: '${NOT_SET_ANYWHERE:-test.npz}'"))
    monkeypatch.setenv("TINY_MODEL_DIR", str(tiny_workspace / "model"))
    cfg = load_pipeline(y)
    assert cfg.model.path == tiny_workspace / "model" and cfg.data.test.path == tiny_workspace / "test.npz"
    monkeypatch.delenv("TINY_MODEL_DIR")
    with pytest.raises(ConfigError, match="TINY_MODEL_DIR is not set"):
        load_pipeline(y)


def test_set_overrides_values_and_resolves_paths_against_cwd(tiny_workspace, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "clean.npz").write_bytes((tiny_workspace / "clean.npz").read_bytes())
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml",
                        ["stages.finetune.epochs=5", "data.clean.path=clean.npz", "stages.prune.enabled=false"],
                        cwd=other)
    assert cfg.stages.finetune.epochs == 5 and cfg.stages.prune.enabled is False
    assert cfg.data.clean.path == other / "clean.npz"


def test_bad_override_syntax_is_a_config_error(tiny_workspace):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.finetune.epochs"])


def test_unknown_scorer_name_lists_known_ones(tiny_workspace):
    with pytest.raises(ConfigError) as err:
        load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.score.methods.clpp={u: 2}"])
    assert "stages.score.methods.clpp" in str(err.value) and "clp" in str(err.value)


@pytest.mark.parametrize("sections, registry", [(ScorerMethods, SCORERS), (DetectorSections, DETECTORS),
                                                (RepairSections, REPAIRS)], ids=["scorers", "detectors", "repairs"])
def test_builtin_sections_are_the_registered_plugins_own_configs(sections, registry):
    """The schema declares the built-ins from their config classes alone (it imports without torch): each must be a
    registered plug-in, validated by the very class that plug-in registered."""
    assert set(sections.model_fields) == set(registry.names())
    for name, field in sections.model_fields.items():
        assert field.annotation.__args__[0] is registry.get(name).config_cls, name


def test_not_yaml_and_not_mapping(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(p)
    p.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_pipeline(p)


@pytest.mark.parametrize("yaml_file", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate_against_the_schema(yaml_file, monkeypatch):
    import yaml

    raw = yaml.safe_load(yaml_file.read_text())
    PipelineConfig.model_validate(raw)  # schema only: the data paths may not exist on this machine


def test_missing_files_are_reported_together_with_schema_mistakes(tmp_path):
    from harden.config.loading import load_pipeline
    from harden.core.errors import ConfigError

    bad = tmp_path / "p.yaml"
    bad.write_text("model: {path: nowhere}\ndata: {clean: {path: missing.npz, heldout_fraction: 2}}\n"
                   "stages: {prune: {coupled: sideways}}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(bad)
    keys = [k for k, _ in err.value.problems]
    assert keys == ["data.clean.heldout_fraction", "stages.prune.coupled", "model.path", "data.clean.path"]


def test_digest_ignores_defaults_and_survives_a_resolved_round_trip(tiny_workspace, tmp_path):
    import yaml

    from harden.config.loading import digest_of_resolved, resolved_dict

    cfg = load_pipeline(tiny_workspace / "pipeline.yaml")
    spelled = load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.polarize.enabled=false"])  # the default
    changed = load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.finetune.epochs=7"])
    assert cfg.digest() == spelled.digest() != changed.digest()
    saved = tmp_path / "config.resolved.yaml"
    saved.write_text(yaml.safe_dump(resolved_dict(cfg)))
    assert digest_of_resolved(saved) == cfg.digest()
    saved.write_text("stages: {nonsense: 1}")
    assert digest_of_resolved(saved) is None


def test_reinvert_without_scan_or_tie_break_is_a_config_error(tiny_workspace):
    with pytest.raises(ConfigError, match="reinvert needs stages.scan.enabled"):
        load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.prune.select.reinvert=true"])
    with pytest.raises(ConfigError, match="itasr_tolerance"):
        load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.prune.select.reinvert=true", "stages.scan.enabled=true"])
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.prune.select.reinvert=true",
                                                           "stages.scan.enabled=true",
                                                           "stages.prune.select.itasr_tolerance=0.05"])
    assert cfg.stages.prune.select.reinvert


def test_keys_that_moved_to_plugin_sections_say_where_they_went(tiny_workspace):
    with pytest.raises(ConfigError) as err:
        load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.scan.epochs=3", "stages.finetune.distill_weight=0",
                                                         "stages.finetune.grating_unlearn_on=always"])
    text = str(err.value)
    assert "stages.scan.epochs: this key has moved: write it as stages.scan.detectors.neural_cleanse.epochs" in text
    assert "write it as stages.finetune.repairs.distill.weight" in text
    assert "stages.finetune.repairs.grating_unlearn.when" in text
