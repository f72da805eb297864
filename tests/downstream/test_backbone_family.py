"""A project's own backbone family, registered in its task's module, trained with ``ldrop fit`` as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from ldrop.backbones import tiny_config
from tests.cli.common import QUICKSTART, SMALL

PACKAGE = '''
from transformers import UniSpeechSatConfig, UniSpeechSatModel
from ldrop.backbones import register_family
from ldrop.tasks import ClassificationTask

register_family("unispeech-sat", UniSpeechSatConfig, UniSpeechSatModel, model_type="unispeech-sat")


class SatTask(ClassificationTask):
    """The shipped classification task; importing its module registers UniSpeech-SAT."""
'''


def test_a_family_registered_in_the_tasks_module_trains_from_its_checkpoint_folder(tmp_path):
    from transformers import UniSpeechSatConfig, UniSpeechSatModel

    config = UniSpeechSatConfig(**{k: v for k, v in tiny_config("hubert").to_dict().items() if k != "model_type"})
    UniSpeechSatModel(config).save_pretrained(tmp_path / "tiny-sat")
    (tmp_path / "satpkg").mkdir()
    (tmp_path / "satpkg" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ldrop.cli", "fit", "--config", QUICKSTART, *SMALL, "--trainer.max_steps", "2",
               "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
               "--model.class_path", "satpkg.SatTask", "--model.init_args.backbone", str(tmp_path / "tiny-sat")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(next((tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")), weights_only=False)
    assert checkpoint["ldrop_task_class"].endswith("SatTask") and checkpoint["state_dict"], checkpoint["ldrop_task_class"]
    # without the task's module, the folder is refused in one line that says how to register the family
    command[command.index("satpkg.SatTask")] = "ClassificationTask"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "register_family" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("ldrop: error:") == 1, result.stderr
