"""Issue 32: the distill stage. A student's one forward, trained on a fixed batch, reproduces
its frozen teacher's guided multi-step output better than the teacher's own 1-step output does
(the teacher sampled by the project's sampler, outside the step); the stage in a run (CLI):
its student, its 1-step validation, its kill and resume, its errors, the tools on it, and its
targets sampled once by `linearsr data teacher_targets`."""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench import run_outcome

from linearsr_jax import config_check, run_config
from linearsr_jax.commands.cli import main
from linearsr_jax.data import latent_crops, pipeline, teacher_targets
from linearsr_jax.diffusion import distill, experts, flow, samplers
from linearsr_jax.errors import UserError
from linearsr_jax.inference.trained import load_trained
from linearsr_jax.run import run_dir
from linearsr_jax.models.build import build_model
from linearsr_jax.models.sr_model import sr_example_inputs
from linearsr_jax.train import loop, run_fit
from linearsr_jax.train import distill_targets
from linearsr_jax.train.distill_step import make_distill_step
from linearsr_jax.train.state import TrainState
from model_helpers import perturbed
from train_runs import (SMALL, cli_env, flatten, small_config, start, straight_killed_resumed,
                        train_command, wait_ok)

TEACHER_EXPERTS = 2
TRAIN_STEPS = 60


def _teacher_config():
  """A teacher whose guided 4-step output differs clearly from its 1-step output."""
  config = small_config()
  config.diffusion.sampler.update(dict(solver="dpm++2m", steps=4, shift=3.0, guidance_scale=3.0))
  return config


def _batch(config, batch_size=4, seed=0):
  rng = np.random.default_rng(seed)
  crop, scale, tokens = config.data.crop_size, config.data.scale, config.tags.max_tokens
  hr = rng.uniform(-1, 1, (batch_size, crop, crop, 3)).astype(np.float32)
  return {
      "hr": hr, "lr": hr.reshape(batch_size, crop // scale, scale, crop // scale, scale, 3).mean(
          (2, 4)), "cond": rng.integers(1, config.tags.vocab_size, (batch_size, tokens), np.int32),
      "cond_mask": np.arange(tokens)[None].repeat(batch_size, 0) < 3
  }


def _random_teacher(model):
  """Experts unlike each other, output layers not zero (a fresh DiT predicts zero velocity)."""

  @jax.jit  # one compile: eagerly, each leaf's perturbation compiles its own
  def random_teacher(key):
    one = model.init(key, *sr_example_inputs(model.dit, model.tags, 1, (4, 4)))["params"]
    return experts.stack_experts([perturbed(one, seed=s) for s in range(TEACHER_EXPERTS)])

  return random_teacher(jax.random.PRNGKey(0))


def _state(params, tx, seed=5):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(seed), lr_scale=jnp.ones(
                        (), jnp.float32), skipped=jnp.zeros(
                            (), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32))


def _sampled(model, latent_space, config, params, batch, key, **sampler):
  """The project's sampler from the source `key` draws (what `eval` and validation run)."""
  apply_fn = experts.model_apply(model)
  lr_latent = flow.lr_source_latent(config.diffusion, latent_space, {}, batch["lr"],
                                    config.data.scale)
  null = (jnp.zeros_like(batch["cond"]), jnp.zeros_like(batch["cond_mask"]))
  return samplers.sample(apply_fn, params, key, lr_latent.shape,
                         (batch["lr"], batch["cond"], batch["cond_mask"]), config.diffusion,
                         null_context=null, lr_latent=lr_latent, **sampler)


@pytest.mark.slow
def test_student_reproduces_the_teachers_steps_better_than_its_one_step():
  config = _teacher_config()
  model, latent_space = build_model(config)

  teacher = _random_teacher(model)
  student = distill.student_start(teacher, config.diffusion.experts)
  # The σ = 1 expert is the last one: its leaves, not the first expert's, start the student.
  np.testing.assert_array_equal(jax.tree.leaves(student)[0][0], jax.tree.leaves(teacher)[0][-1])
  tx = optax.adam(1e-3)
  step = jax.jit(
      make_distill_step(model, latent_space, tx, config.diffusion, config.distill,
                        scale=config.data.scale, ema_decay=0.0))
  batch = {k: jnp.asarray(v) for k, v in _batch(config).items()}
  state, losses = _state(student, tx), []
  for _ in range(TRAIN_STEPS):
    state, metrics = step(state, batch, {}, teacher)
    losses.append(float(metrics["train/loss_teacher"]))
  assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5]), losses

  @jax.jit  # one compile for the five samplings
  def errors(student_start, student_trained, key):
    sampled = lambda params, **sampler: _sampled(model, latent_space, config, params, batch, key, **
                                                 sampler)
    target = sampled(teacher)
    error = lambda x: jnp.mean(jnp.square(x - target))
    return (error(sampled(teacher, steps=1)), error(sampled(teacher, **distill.STUDENT_SAMPLER)),
            error(sampled(student_start, **distill.STUDENT_SAMPLER)),
            error(sampled(student_trained, **distill.STUDENT_SAMPLER)))

  # A source the training never drew.
  teacher_1, teacher_1_plain, student_0, student_1 = map(
      float, errors(student, state.params, jax.random.PRNGKey(123)))
  # At least 3 dB closer to the teacher's 4 guided steps than either 1-step teacher.
  assert student_1 < 0.5 * min(teacher_1, teacher_1_plain), (student_1, teacher_1, teacher_1_plain)
  # Before training the student is the teacher's 1-step output without guidance.
  np.testing.assert_allclose(student_0, teacher_1_plain, rtol=1e-5)


@pytest.mark.slow
def test_targets_sampled_once_over_the_mesh_give_the_batches_the_step_samples(tmp_path):
  """The teacher samples two batches sharded over two devices and the rows are written; read
  back, each is its batch's row with the sampler's start and the project's sampler's output
  from there, and a distill step on them is the step that samples the teacher itself."""
  # A cheap teacher (2 guided steps): what is tested is where its output goes.
  config = small_config(**{"diffusion.sampler.steps": 2, "diffusion.sampler.guidance_scale": 2.0})
  the_run = loop.Run(config, tmp_path / "w", load_weights=False, devices=jax.devices()[:2])
  teacher = _random_teacher(the_run.model)
  sampler = jax.jit(
      lambda batch, key: _sampled(the_run.model, the_run.latent_space, config, teacher, batch, key))
  batches = [_batch(config, seed=s) for s in range(2)]
  index = distill_targets.write_targets(the_run, teacher, batches, tmp_path / "t",
                                        key=jax.random.PRNGKey(7))
  assert (index["batch_size"], index["batches"]) == (4, 2)
  source = teacher_targets.TeacherTargetSource(tmp_path / "t", config.diffusion.sampler)
  stored = [
      {k: np.stack([source[4 * b + r][k] for r in range(4)]) for k in source[0]} for b in range(2)
  ]
  for b, batch in enumerate(batches):
    assert set(stored[b]) == set(batch) | {"x1", "teacher_x0"}
    for k in batch:
      np.testing.assert_array_equal(stored[b][k], batch[k])
    sampled = sampler({k: jnp.asarray(v) for k, v in batch.items()},
                      jax.random.fold_in(jax.random.PRNGKey(7), b))
    np.testing.assert_allclose(stored[b]["teacher_x0"], sampled, atol=1e-4)
  # Step 0 of a state whose rng is the targets' seed draws batch 0's start.
  tx = optax.adam(1e-3)
  step = jax.jit(
      make_distill_step(the_run.model, the_run.latent_space, tx, config.diffusion, config.distill,
                        scale=config.data.scale, ema_decay=0.0))
  state = _state(distill.student_start(teacher, config.diffusion.experts), tx, seed=7)
  sampling, reading = (step(state, {k: jnp.asarray(v)
                                    for k, v in b.items()}, {}, teacher)
                       for b in (batches[0], stored[0]))
  for name in ("train/loss_teacher", "train/grad_norm"):
    np.testing.assert_allclose(reading[1][name], sampling[1][name], rtol=1e-4)
  # The train pipeline hands the stored rows on whole.
  rows = next(iter(pipeline.make_train_dataset(source, config.data, tokenize=None)))
  assert {k for k in rows} == set(stored[0])
  with pytest.raises(UserError, match="the teacher sampled with .* but the config's"):
    teacher_targets.TeacherTargetSource(tmp_path / "t", small_config().diffusion.sampler)


def test_stored_targets_train_in_the_order_their_hosts_sampled_them(tmp_path):
  """Two hosts wrote their rows of 3 batches of 4, each its own shard: training (on one host, or
  on two) reads global batch i as step i's, unshuffled."""
  from array_record.python.array_record_module import ArrayRecordWriter

  sampler = small_config().diffusion.sampler
  shards = [latent_crops.shard_name(p, 2) for p in range(2)]
  for host, shard in enumerate(shards):
    writer = ArrayRecordWriter(str(tmp_path / shard), "group_size:1")
    for batch in range(3):
      for row in range(2):
        writer.write(teacher_targets.serialise({"x1": np.array([batch * 4 + host * 2 + row])}))
    writer.close()
  (tmp_path / teacher_targets.INDEX).write_text(
      json.dumps({
          "format": teacher_targets.FORMAT, "sampler": sampler.to_dict(), "batch_size": 4,
          "batches": 3, "shards": shards
      }))
  source = teacher_targets.TeacherTargetSource(tmp_path, sampler)
  assert [int(source[g]["x1"][0]) for g in range(len(source))] == list(range(12))
  data = small_config(**{"data.batch_size": 4}).data
  for host, hosts in [(0, 1), (1, 2)]:
    batches = iter(pipeline.make_train_dataset(source, data, None, host, hosts))
    rows = [next(batches)["x1"][:, 0].tolist() for _ in range(4)]
    local = 4 // hosts
    # Past the last batch, the first comes again.
    assert rows == [[b % 3 * 4 + host * local + r for r in range(local)] for b in range(4)]


def test_a_distill_stage_needs_a_teacher_and_a_single_expert():
  config = small_config(stage_order="distill")
  with pytest.raises(UserError, match="starts with distill stage 'distill', which has no teacher"):
    config_check.validate(config)
  config = small_config(stage_order="pretrain,distill", **{"stages.distill.num_experts": 2})
  with pytest.raises(UserError, match="num_experts=2 must be 1"):
    config_check.validate(config)


# ------------------------------------------------------------------------ the stage in a run

# A teacher of 3 steps, guided and sampled in 2 steps; a student of 6.
DISTILL_RUN = dict(SMALL, stage_order="pretrain,distill", stages=dict(pretrain=dict(max_steps=3),
                                                                      distill=dict(max_steps=6)),
                   diffusion=dict(sampler=dict(steps=2, guidance_scale=2.0)))
# pretrain saves steps 0 and 3; the 4th save is distill's step 3, killed in flight.
KILL = "checkpoint_write@4"


@pytest.fixture(scope="module")
def distill_runs(tmp_path_factory):
  """(uninterrupted workdir, workdir killed during the distill stage and resumed)."""
  root = tmp_path_factory.mktemp("distill")

  def after_kill(point):
    assert not (root / "killed" / "distill" / "result.json").exists()

  return straight_killed_resumed(root, DISTILL_RUN, [KILL], cli_env(), after_kill=after_kill)


@pytest.mark.slow
def test_the_student_starts_from_the_teachers_knee_and_validates_in_one_step(distill_runs):
  straight, _ = distill_runs
  origin = json.loads((straight / "distill" / "stage.json").read_text())
  assert origin["num_experts"] == 1 and origin["init_from"]["stage"] == "pretrain"
  assert origin["init_from"]["knee_step"] == json.loads(
      (straight / "pretrain" / "result.json").read_text())["knee_step"]
  rows = [json.loads(l) for l in (straight / "distill" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "val/psnr_y" in r] == [0, 3, 6]
  assert all(np.isfinite(r["train/loss_teacher"]) for r in rows if "train/loss" in r)
  # The step-0 evaluation is the student as it starts: the teacher's σ = 1 expert sampled in one
  # step without guidance, which `eval` of the teacher's stage reproduces with those settings.
  teacher = load_trained(straight, stage="pretrain")
  student = load_trained(straight, stage="distill", step=0)
  assert dict(student.diffusion.sampler) == dict(teacher.diffusion.sampler,
                                                 **distill.STUDENT_SAMPLER)
  assert teacher.diffusion.sampler.steps == 2 and teacher.diffusion.sampler.guidance_scale == 2.0
  jax.tree.map(np.testing.assert_array_equal, student.params, teacher.params)


@pytest.mark.slow
def test_a_killed_distill_stage_resumes_bit_for_bit(distill_runs):
  straight, killed = distill_runs
  a, b = run_outcome.outcome(straight), run_outcome.outcome(killed)
  assert set(a["stages"]) == {"pretrain", "distill"} and len(a["run"]["stages"]) == 2
  assert run_outcome.differences(a, b) == []
  assert ((straight / "distill" / "metrics.jsonl").read_text() == (killed / "distill" /
                                                                   "metrics.jsonl").read_text())


@pytest.mark.slow
def test_a_teacher_of_another_model_stops_the_run_before_it_writes(distill_runs, tmp_path):
  straight, _ = distill_runs
  teacher = straight / "pretrain" / "checkpoints" / "3"
  config = small_config(stage_order="distill",
                        **{"distill.teacher": str(teacher), "model.hidden": 32})
  with pytest.raises(
      UserError, match=r"tensor .* has shape \(64, 64\) there but \(32, 32\) "
      "in this model: a teacher of another model"):
    loop.Run(config, tmp_path / "w", devices=jax.devices()[:1])  # what `run` does first
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_targets_the_command_writes_train_the_stage_as_it_samples_itself(distill_runs, tmp_path):
  """`linearsr data teacher_targets` samples the straight run's distill teacher (its pretrain
  knee) over the stage's 6 batches; a run of that pretrain stage whose distill stage trains from
  them logs, step for step, what the straight run logged sampling its teacher in every step."""
  straight, _ = distill_runs
  targets, workdir = tmp_path / "targets", tmp_path / "w"
  command = [
      sys.executable, "-m", "linearsr_jax.commands.cli", "data", "teacher_targets", "--workdir",
      str(straight), "--out",
      str(targets)
  ]
  wait_ok(start(command, tmp_path / "targets.log", cli_env()), tmp_path / "targets.log")
  assert "wrote 6 batches × 4 teacher targets" in (tmp_path / "targets.log").read_text()
  workdir.mkdir()  # the run with the straight run's pretrain stage, its distill stage unstarted
  shutil.copy(straight / "config.json", workdir)
  shutil.copytree(straight / "pretrain", workdir / "pretrain")
  wait_ok(
      start(train_command(workdir, f"--config.distill.targets={targets}", tree=DISTILL_RUN),
            tmp_path / "train.log", cli_env()), tmp_path / "train.log")
  rows = lambda w: [
      json.loads(l) for l in (w / "distill" / "metrics.jsonl").read_text().splitlines()
  ]
  sampled, read = rows(straight), rows(workdir)
  assert [r["step"] for r in read] == [r["step"] for r in sampled]
  for a, b in zip(sampled, read):
    assert a.keys() == b.keys()
    # The teacher sampled alone, not inside the step: the same to float round-off (the losses
    # are small: a teacher of 3 steps is near its zero start, so no absolute tolerance).
    for key in a:
      if isinstance(a[key], float):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=0, err_msg=f"{a['step']} {key}")
      else:
        assert b[key] == a[key], (a["step"], key)


def test_bad_teacher_targets_commands_are_one_line(tmp_path, capsys):

  def fails(workdir, *flags, out="t"):
    argv = ["data", "teacher_targets", "--workdir", str(workdir), "--out", str(tmp_path / out)]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err

  assert "no run there (no config.json" in fails(tmp_path / "nothing")
  flow_run, distill_run = (run_dir.RunDir(tmp_path / n) for n in ("flow", "distill"))
  run_config.write(flow_run, small_config())
  assert "config.stage_order='pretrain' has no distill stage" in fails(flow_run.path)
  run_config.write(distill_run, small_config(**dict(flatten(DISTILL_RUN))))
  (tmp_path / "used").mkdir()
  (tmp_path / "used" / teacher_targets.INDEX).write_text("{}")
  assert "already exists (pass --overwrite to replace it)" in fails(distill_run.path, out="used")
  assert "--steps 0: sample at least one batch" in fails(distill_run.path, "--steps", "0")
  # The config `train` takes (a batch for the 8 test devices); the teacher's stage has not run.
  flags = [f"--config.{k}={v}" for k, v in flatten(DISTILL_RUN)] + ["--config.data.batch_size=8"]
  assert (f"stage 'pretrain' of the run in {distill_run.path} has not ended, so the teacher of "
          "distill stage 'distill' (its knee) is not known yet"
          in fails(distill_run.path, "--config", "configs/tiny.py", *flags))


@pytest.mark.slow
def test_export_of_a_distilled_run_is_the_single_expert_student(distill_runs, tmp_path):
  straight, _ = distill_runs
  assert main(["export", str(straight), "--layout", "diffusers", "--out", str(tmp_path / "e")]) == 0
  info = json.loads((tmp_path / "e" / "linearsr_export.json").read_text())
  assert not (tmp_path / "e" / "expert_0").exists()
  assert "(distill step " in info["source"] and info["interval"] == [0.0, 1.0], info


@pytest.mark.parametrize("field, value", [("diffusion.sampler.steps", 3),
                                          ("diffusion.sampler.guidance_scale", 4.0),
                                          ("distill.gt_weight", 0.5)])
def test_a_started_distill_stage_resumes_only_with_its_teachers_settings(tmp_path, field, value):
  """The teacher's sampler and the distill loss make the student's targets: a run whose distill
  stage has started refuses others in one line; before it has started they may change."""
  workdir = run_dir.RunDir(tmp_path / "w")
  config = small_config(**dict(flatten(DISTILL_RUN)))
  run_config.write(workdir, config)
  run_dir.write_json(workdir.stage("pretrain").stage_json, {"num_experts": 1, "init_from": {}})
  changed = small_config(**dict(flatten(DISTILL_RUN)) | {field: value})
  check = lambda c: run_fit.check(
      loop.Run(c, workdir.path, load_weights=False, devices=jax.devices()[:1]))
  check(changed)  # only pretrain has started
  run_dir.write_json(
      workdir.stage("distill").stage_json, {"num_experts": 1, "init_from": {"stage": "pretrain"}})
  check(config)
  stored = config_check.flatten(config.to_dict())[field]
  with pytest.raises(
      UserError, match=rf"^config.{field}={value!r} does not fit the run in .*, "
      rf"whose distill stage 'distill' started with {stored!r} \(its config.json\)"):
    check(changed)
