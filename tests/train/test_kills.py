"""Issue 15: a two-stage run (pretrain → moe) SIGKILLed at named moments (kill_points.py) and
resumed after each with the same command (once past a truncated latest checkpoint) ends exactly
as the uninterrupted run: run.json, each stage's knee and last evaluation, and every leaf of the
final states, bit for bit.
`bench/chaos.py` does the same at many seeded random moments."""

import pytest

from bench import run_outcome

from linearsr_jax.run import kill_points
from damage import truncate_array_file
from train_runs import SMALL, cli_env, straight_killed_resumed

TWO_STAGES = dict(SMALL, stage_order="pretrain,moe", stages=dict(pretrain=dict(max_steps=12),
                                                                 moe=dict(max_steps=6)))

# One workdir killed again and again: each kill lands in the run that resumed from the last.
# (A half metrics line: test_training.py; every point at random moments: bench/chaos.py.)
KILLS = [
    "checkpoint_write@3",  # step 6's save in flight: resume from step 3 (or 6, if it landed)
    "stage_ended@1",  # pretrain's result.json written, moe not started
    "knee_restored@1",  # the last stage's finish: moe's knee read, nothing of it written
]
DAMAGED_AFTER = {"checkpoint_write@3"}  # and then its latest checkpoint is truncated


def test_point_names_are_known():
  assert {k.split("@")[0] for k in KILLS} <= set(kill_points.POINTS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("kills")
  killed = root / "killed"
  # What a kill between an atomic write's temporary file and its rename leaves.
  stale = [
      killed / ".run.json.0123456789ab.tmp", killed / "pretrain" / ".knee.png.abcdef012345.tmp"
  ]

  def after_kill(point):
    if point in DAMAGED_AFTER:  # the resumed run falls back past it and redoes its steps
      steps = sorted(
          int(p.name) for p in (killed / "pretrain" / "checkpoints").iterdir() if p.name.isdigit())
      truncate_array_file(killed / "pretrain" / "checkpoints" / str(steps[-1]))
    if point == KILLS[-1]:
      for path in stale:
        path.write_bytes(b"half")

  straight, killed = straight_killed_resumed(root, TWO_STAGES, KILLS, cli_env(),
                                             after_kill=after_kill)
  return straight, killed, stale


@pytest.mark.slow
def test_killed_at_every_point_ends_as_the_uninterrupted_run(runs):
  straight, killed, _ = runs
  a, b = run_outcome.outcome(straight), run_outcome.outcome(killed)
  assert set(a["stages"]) == {"pretrain", "moe"} and len(a["run"]["stages"]) == 2
  assert run_outcome.differences(a, b) == []


@pytest.mark.slow
def test_stale_temporaries_are_cleaned_up_on_resume(runs):
  _, killed, stale = runs
  assert not any(path.exists() for path in stale)
  assert (killed / "pretrain" / "knee.png").stat().st_size > 0


@pytest.mark.slow
def test_the_truncated_checkpoint_was_set_aside(runs):
  _, killed, _ = runs
  assert len(list((killed / "pretrain" / "damaged_checkpoints").iterdir())) == 1


def test_outcomes_differ_when_a_run_does():
  """The comparison can fail: one flipped bit in one leaf, one changed knee step."""
  a = {"run": {"stages": [{"knee_step": 6}]}, "stages": {"moe": {"state_sha256": {"x": "0a"}}}}
  b = {"run": {"stages": [{"knee_step": 6}]}, "stages": {"moe": {"state_sha256": {"x": "0b"}}}}
  assert run_outcome.differences(a, b) == ["/stages/moe/state_sha256/x"]
  assert run_outcome.differences(a, a) == []
  assert run_outcome.differences({"run": {"stages": [{"knee_step": 3}]}},
                                 {"run": {"stages": [{"knee_step": 6}]}}) == ["/run/stages"]
