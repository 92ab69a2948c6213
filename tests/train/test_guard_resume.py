"""Issue 29, item 4: the divergence guard resumes exactly. A fine-tuning stage with a learning
rate of 1 explodes twice (steps 2 and 4); killed right after its second rollback and resumed,
it ends bit for bit as the run that never stopped: the rollback was checkpointed at once, and
the resumed guard knows both rollbacks (so it is spent) and the losses it took in."""

import pytest

from bench import run_outcome
from linearsr_jax.train import divergence_guard

from linearsr_jax.run import run_dir
from linearsr_jax.train.divergence_guard import DivergenceGuard
from train_runs import SMALL, cli_env, straight_killed_resumed

DIVERGING = dict(
    SMALL, stage_order="pretrain,finetune", optimizer=dict(warmup_steps=0),
    train=dict(SMALL["train"], guard=dict(max_rollbacks=2)), stages=dict(
        pretrain=dict(max_steps=1, esgf=False),
        finetune=dict(num_experts=1, max_steps=6, esgf=False, optimizer=dict(learning_rate=1.0))))


def rollbacks(workdir) -> list:
  rows = run_dir.read_jsonl(workdir / "finetune" / "metrics.jsonl")[0]
  return [(r["step"], r[divergence_guard.TRIGGER]) for r in rows if divergence_guard.ROLLBACKS in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("guard")
  straight, killed = straight_killed_resumed(root, DIVERGING, ["rolled_back@2"], cli_env(),
                                             timeout=480)
  return straight, killed, (root / "resumed.log").read_text()


@pytest.mark.slow
def test_a_run_killed_after_a_rollback_resumes_from_it_and_ends_as_the_uninterrupted_run(runs):
  straight, killed, resumed_log = runs
  assert rollbacks(straight) == [(2, "train/loss"), (4, "train/loss")]
  assert "resumed from checkpoint 4" in resumed_log
  assert run_outcome.differences(run_outcome.outcome(straight), run_outcome.outcome(killed)) == []
  assert ((killed / "finetune" / "metrics.jsonl").read_text() == (straight / "finetune" /
                                                                  "metrics.jsonl").read_text())


class _Cfg:
  enabled, max_rollbacks, loss_factor, psnr_drop_db, lr_factor = True, 2, 10.0, 3.0, 0.5


def test_a_resumed_guard_holds_what_the_log_says():
  """The losses it took in: finite ones while armed, not the one it rolled back on; its
  rollbacks as recorded, even where judging the rows again would say otherwise."""
  rows = [{"step": 0, "val/psnr_y": 25.0}, {"step": 1, "train/loss": 1.0},
          {"step": 2, "train/loss": float("nan")}, {"step": 3, "train/loss": 50.0},
          {"step": 3, "guard/rollbacks": 1,
           "guard/trigger": "train/loss"}, {"step": 4,
                                            "train/loss": 3.0}, {"step": 6, "val/psnr_y": 20.0},
          {"step": 6, "guard/rollbacks": 2,
           "guard/trigger": "val/psnr_y"}, {"step": 7, "train/loss": 2.0}]
  guard = DivergenceGuard(_Cfg, start_params={})
  guard.resume(rows[:-1])
  assert (guard.first, guard.rollbacks, guard.losses) == (25.0, 2, [1.0, 3.0])
  guard = DivergenceGuard(_Cfg, start_params={})
  guard.resume(rows[:6])
  assert (guard.rollbacks, guard.losses) == (1, [1.0, 3.0])
  assert guard.exploded(31.0) and not guard.exploded(19.0)  # 10 × the median, 2.0
