"""Issue 29, item 3: `linearsr train` with a config that does not fit the run in its workdir
is one line and leaves the workdir byte for byte as it was (its config.json, a killed run's
lock and temporaries included); a config that fits resumes. The tools validate the config.json
they read."""

import hashlib
import json
import shutil
import socket
import subprocess

import pytest

from linearsr_jax.commands import cli_knee
from linearsr_jax.errors import UserError
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.train import loop, run_fit
from repo_paths import REPO
from trained_run import tiny_run_config, trained_run
from train_runs import SMALL, cli_env, train_command


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tool tests' two-stage run (pretrain, then 4-expert moe), trained once per session."""
  return trained_run(tmp_path_factory)


def config_with(changes: dict):
  config = tiny_run_config()
  config.update_from_flattened_dict(changes)
  return config


@pytest.fixture
def run_copy(trained, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


def tree_digest(root) -> dict:
  """{relative path: SHA-256} of every file under `root`, and every folder (None)."""
  return {
      str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
      for p in sorted(root.rglob("*"))
  }


@pytest.mark.slow
def test_a_mismatched_cli_run_is_one_line_and_changes_nothing(run_copy):
  """A killed run left its lock (a pid that no longer runs) and an atomic write's temporary:
  even those stay, as the refusal comes before the lock is taken."""
  dead = subprocess.Popen(["true"])
  dead.wait()
  (run_copy / "run.lock").write_text(
      json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "then", "token": "0"}))
  (run_copy / ".run.json.0123456789ab.tmp").write_bytes(b"half")
  before = tree_digest(run_copy)
  command = train_command(run_copy, "--config.model.hidden=32",
                          tree=dict(SMALL, stage_order="pretrain,moe"))
  result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=240)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("linearsr: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "does not match this model" in errors[0] and "(1, 64, 64) in the checkpoint" in errors[0]
  assert tree_digest(run_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"model.attention": "softmax"},  # the same arrays, another model
            "config.model.attention='softmax' does not fit the run in {run}, trained with 'linear'"
        ),
        ({"optimizer.name": "adafactor"
         }, "checkpoint {run}/pretrain/checkpoints/4 does not match this model and config"),
        ({"stages.moe.num_experts": 2},
         "the run in {run} has started stage 'moe' from stage 'pretrain' with num_experts=4, but "
         "config.stages.moe.num_experts=2"),
        ({"stage_order": "pretrain"
         }, "has started stage 'moe' from stage 'pretrain', but config.stage_order='pretrain' "
         "leaves it out"),
        ({"stage_order": "pretrain,finetune,moe"
         }, "has started stage 'moe' from stage 'pretrain', but "
         "config.stage_order='pretrain,finetune,moe' puts it after 'finetune'"),
    ])
def test_a_config_that_does_not_fit_changes_nothing(run_copy, change, expected):
  before = tree_digest(run_copy)
  with pytest.raises(UserError) as error:
    loop.run(config_with(change), run_copy)
  assert expected.format(run=run_copy) in str(error.value)
  assert tree_digest(run_copy) == before


@pytest.mark.slow
def test_what_may_change_on_resume_fits(trained):
  """Budgets, learning rates, evaluation, how the model is computed, a stage added."""
  config = config_with({
      "stages.pretrain.max_steps": 40, "optimizer.learning_rate": 1e-4, "train.eval_every": 7,
      "model.remat": "full", "stage_order": "pretrain,moe,finetune"
  })
  run_fit.check(loop.Run(config, trained, load_weights=False))


@pytest.mark.slow
@pytest.mark.parametrize("text, expected", [
    ("{\"model\": ", "config.json: damaged JSON (Expecting value"),
    ("[1, 2]", "config.json: unreadable run config (not a JSON object)"),
    ("{\"model\": {}}", "config.json: not a linearsr run config (AttributeError"),
])
def test_the_tools_refuse_an_unreadable_run_config_in_one_line(run_copy, text, expected):
  (run_copy / "config.json").write_text(text)
  for read in (lambda: load_trained(run_copy), lambda: load_trained(run_copy, stage="pretrain"),
               lambda: cli_knee.run_esgf_config(run_copy)):
    with pytest.raises(UserError, match="^" + str(run_copy)) as error:
      read()
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_the_tools_validate_the_run_config(run_copy):
  config = json.loads((run_copy / "config.json").read_text())
  config["model"]["hidden"] = 63
  (run_copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(
      UserError, match=r"config.json: config.model.hidden=63 must be a multiple "
      r"of model.heads=2"):
    load_trained(run_copy)
