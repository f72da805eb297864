"""Every shipped config parses and instantiates, so no config can rot (litgpt's test_config_hub idea)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldrop.cli.lightning import TRAINER_DEFAULTS, LdropCLI
from ldrop.data.speechcommands import SPEECH_COMMANDS_WORDS
from ldrop.selectors import InputConditionedSelector, LearnedScheduleSelector, RandomSelector, StaticSelector
from ldrop.tasks import AllocatedLayers, ClassificationTask, CTCTask
from ldrop.testing import fixtures
from tests.helpers import make_backbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATA = sorted((CONFIGS / "data").glob("*.yaml"))
BACKBONES = sorted((CONFIGS / "backbone").glob("*.yaml"))
METHODS = sorted((CONFIGS / "method").glob("*.yaml"))

EXPECTED_SELECTOR = {
    "input-conditioned": InputConditionedSelector,
    "allocate": InputConditionedSelector,
    "schedule": LearnedScheduleSelector,
    "random": RandomSelector,
    "static": StaticSelector,
    "early-exit": type(None),
    "full": type(None),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Layout-faithful dataset fixtures and tiny local backbones (hub ids are not reachable in tests)."""
    base = tmp_path_factory.mktemp("configs")
    fixtures.make_librispeech_tree(base / "libri")
    fixtures.make_tedlium_tree(base / "ted")
    # Fewer words and ESC-50 classes than the real corpora: fewer clips keep the fit/test runs fast.
    fixtures.make_speech_commands_tree(base / "sc", words=SPEECH_COMMANDS_WORDS[:6])
    fixtures.make_esc50_tree(base / "esc", targets=range(10))
    for family in ("wavlm", "hubert"):
        make_backbone(family).save_pretrained(base / f"tiny-{family}")
    return {
        "librispeech": str(base / "libri"),
        "tedlium": str(base / "ted" / "TEDLIUM_release-3"),
        "speechcommands": str(base / "sc"),
        "esc50": str(base / "esc"),
        "wavlm": str(base / "tiny-wavlm"),
        "hubert": str(base / "tiny-hubert"),
    }


def _instantiate(args: list[str], tmp_path) -> LdropCLI:
    return LdropCLI(
        ClassificationTask.__mro__[1],  # LayerDropTask
        __import__("ldrop.data", fromlist=["AudioDataModule"]).AudioDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={**TRAINER_DEFAULTS, "default_root_dir": str(tmp_path), "logger": False},
        run=False,
        args=args,
    )


def _overrides(data: Path, backbone: Path, roots: dict[str, str]) -> list[str]:
    family = "hubert" if "hubert" in backbone.stem else "wavlm"
    return ["--model.init_args.backbone", roots[family], "--data.init_args.root", roots[data.stem],
            "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda p: p.stem)
@pytest.mark.parametrize("data", DATA, ids=lambda p: p.stem)
def test_every_config_combination_instantiates(data, backbone, method, roots, tmp_path):
    args = ["--config", str(data), "--config", str(backbone), "--config", str(method),
            *_overrides(data, backbone, roots)]
    cli = _instantiate(args, tmp_path)
    expected_task = CTCTask if data.stem in ("librispeech", "tedlium") else ClassificationTask
    assert isinstance(cli.model, expected_task)
    assert isinstance(cli.model.selector, EXPECTED_SELECTOR[method.stem])
    assert isinstance(cli.model.depth, AllocatedLayers) == (method.stem == "allocate")
    assert cli.model.hparams.backbone == roots["hubert" if "hubert" in backbone.stem else "wavlm"]
    if expected_task is ClassificationTask:
        assert cli.model.class_names == list(cli.datamodule.class_names)  # linked, not typed twice


@pytest.mark.parametrize("name", ["quickstart.yaml", "quickstart-ctc.yaml"])
def test_quickstart_configs_instantiate(name, tmp_path):
    cli = _instantiate(["--config", str(CONFIGS / name)], tmp_path)
    assert isinstance(cli.model.selector, InputConditionedSelector)
    if isinstance(cli.model, ClassificationTask):
        assert cli.model.num_classes == cli.datamodule.num_classes
    else:
        assert set(cli.model.vocabulary) == set(cli.datamodule.alphabet) | {" "}


def test_every_yaml_key_a_user_changes_is_commented():
    for path in [*DATA, *BACKBONES, *METHODS, *CONFIGS.glob("quickstart*.yaml")]:
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path.name} has no header comment"
        for line in lines:
            stripped = line.strip()
            is_leaf = ":" in stripped and not stripped.endswith(":") and not stripped.startswith("#")
            if is_leaf and not stripped.startswith(("class_path", "- ")) and "init_args" not in stripped:
                assert "#" in line or stripped.split(":")[0] in {"val_subsets", "accelerator", "log_every_n_steps",
                                                                "check_val_every_n_epoch", "num_test", "num_val",
                                                                "seed_everything", "selector", "early_exit"}, (
                    f"{path.name}: '{stripped}' has no comment"
                )


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda p: p.stem)
def test_the_input_conditioned_config_composes_with_the_layers_input(backbone, roots, tmp_path):
    data = CONFIGS / "data" / "speechcommands.yaml"
    args = ["--config", str(data), "--config", str(backbone), "--config", str(CONFIGS / "method" / "input-conditioned.yaml"),
            *_overrides(data, backbone, roots), "--model.init_args.selector.init_args.input", "layers",
            "--model.init_args.selector.init_args.read_layers", "2"]
    cli = _instantiate(args, tmp_path)
    selector = cli.model.selector
    assert isinstance(selector, InputConditionedSelector)
    assert (selector.input, selector.prefix_layers) == ("layers", 2)
    assert selector.feature_dim == cli.model.backbone.hidden_size
    assert cli.model.hparams.selector["init_args"]["input"] == "layers"  # what a checkpoint rebuilds from
