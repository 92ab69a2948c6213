"""Issue 16: gs:// workdirs, checkpoints, datasets and tool outputs, against a GCS emulator
(fake-gcs-server behind a TLS proxy, tests/gcs_emulator.py) that the tests start and stop.

One two-stage run trains from a dataset folder in the bucket into a gs:// workdir; a second,
the same, is SIGKILLed mid-stage and resumed from the bucket while the storage drops its first
checkpoint reads, and both end alike. The tools read that run from the bucket and write their
outputs there. A two-process run with params sharded across the processes trains into the
bucket as a pod does, and ends where one process with two devices ends."""

import io
import json
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from PIL import Image

from gcs_emulator import DENIED_BUCKET, Emulator
from linearsr_jax import params_io
from linearsr_jax.commands.cli import main
from linearsr_jax.commands.cli_export import read_npz_export
from linearsr_jax.data.sources import DEMO_IMAGES
from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir
from bench import run_outcome
from lock_race import race
from repo_paths import REPO
from train_runs import (SMALL, cli_env, checkpoint_steps, start, straight_killed_resumed,
                        train_command, wait_ok, xla_flags)

BUCKET = "gs://runs"
# A bucket has no flocks: the killed run's lock is taken over once its heartbeat is LOCK_STALE s
# old (run_lock.py).
LOCK_STALE = 5
TWO_STAGES = dict(
    SMALL, stage_order="pretrain,moe",
    data=dict(SMALL["data"], source=dict(kind="folder", path=f"{BUCKET}/photos")),
    train=dict(SMALL["train"], eval_every=2, lock_heartbeat_seconds=1,
               lock_stale_seconds=LOCK_STALE), stages=dict(pretrain=dict(max_steps=4),
                                                           moe=dict(max_steps=2)))


def _png(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _photo(name, size):
  import skimage.data
  image = getattr(skimage.data, name)()[:256, :256]
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  emulator = Emulator(tmp_path_factory.mktemp("gcs"))
  patch = pytest.MonkeyPatch()
  for key, value in emulator.environment.items():
    patch.setenv(key, value)
  for bucket in ("runs", DENIED_BUCKET):
    emulator.create_bucket(bucket)
  for name in list(DEMO_IMAGES)[:3]:  # the training photos, with a tag sidecar for one
    (epath.Path(BUCKET) / "photos" / f"{name}.png").write_bytes(_png(_photo(name, 96)))
  (epath.Path(BUCKET) / "photos" / f"{list(DEMO_IMAGES)[0]}.txt").write_text("cat, fur")
  hr, lr = _photo("coffee", 64), _photo("coffee", 16)  # a held-out pair for eval and upscale
  (epath.Path(BUCKET) / "pairs" / "HR" / "coffee.png").write_bytes(_png(hr))
  (epath.Path(BUCKET) / "pairs" / "LR" / "coffee.png").write_bytes(_png(lr))
  yield emulator
  patch.undo()
  emulator.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The CLI runs' environment, their compilation cache shared by this module's runs."""
  return cli_env()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
  """The logs of the `runs` fixture's processes."""
  return tmp_path_factory.mktemp("gcs_runs")


# The resume's first reads of the checkpoint (requests whose line matches this) are dropped.
CHECKPOINT_READ = r"^GET \S*checkpoints%2F\d+%2Fstate%2F"


@pytest.fixture(scope="module")
def runs(gcs, env, logs):
  """(uninterrupted workdir, killed-and-resumed workdir), both in the bucket. The storage drops
  the connections of the resume's first two checkpoint reads, then answers again."""
  killed = f"{BUCKET}/killed"

  def after_kill(point):
    assert not run_dir.RunDir(killed).run_json.exists()
    gcs.drop(CHECKPOINT_READ, 2)

  return straight_killed_resumed(logs, TWO_STAGES, ["checkpoint_write@2"], env,
                                 workdirs=(f"{BUCKET}/straight", killed), after_kill=after_kill,
                                 pause=LOCK_STALE)


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_from_the_bucket_and_ends_alike(runs):
  straight, killed = runs
  a, b = run_outcome.outcome(straight), run_outcome.outcome(killed)
  assert [s["name"] for s in a["run"]["stages"]] == ["pretrain", "moe"]
  assert a == b
  workdir = epath.Path(straight)
  assert {"config.json", "run.json", "pretrain", "moe"} <= {p.name for p in workdir.iterdir()}
  stage = workdir / "pretrain"
  assert (stage / "knee.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert any(p.name.startswith("events.") for p in stage.iterdir())
  assert not (workdir / "run.lock").exists()
  # The metrics log is whole objects: part 0 of the newest generation, then one per evaluation.
  rows, unreadable = run_dir.read_jsonl(stage / "metrics.jsonl")
  assert unreadable == 0
  assert [r["step"] for r in rows if "val/psnr_y" in r] == [0, 2, 4]
  resumed = epath.Path(killed) / "pretrain" / "metrics.jsonl"
  # The first generation was replaced, and stays until the next resume: a reader on another
  # host may have listed it just before.
  assert sorted(p.name for p in resumed.iterdir()) == ["0", "1"]


@pytest.mark.slow
def test_dropped_connections_during_a_resume_are_retried_and_it_ends_alike(runs, logs):
  """Issue 29: the storage dropped the connections of the resume's first reads of the
  checkpoint (twice, `runs`), then answered again: the reads tried again, nothing was set aside,
  and the run ended as the uninterrupted one did (the test above)."""
  straight, killed = runs
  text = (logs / "resumed.log").read_text()
  assert "storage error" in text and "try 3 of" in text, text[-3000:]
  assert "damaged" not in text, text[-3000:]
  assert not any((epath.Path(killed) / stage / "damaged_checkpoints").exists()
                 for stage in ("pretrain", "moe"))
  assert run_outcome.outcome(killed) == run_outcome.outcome(straight)


@pytest.mark.slow
def test_tools_read_the_run_from_the_bucket_and_write_there(runs, capsys):
  straight, _ = runs
  assert main(["knee", "--workdir", straight, "--stage", "pretrain"]) == 0
  assert capsys.readouterr().out.startswith("metrics: gs://runs/straight/pretrain/metrics.jsonl (")
  out = f"{BUCKET}/outputs"
  assert main([
      "eval", "--hr_dir", f"{BUCKET}/pairs/HR", "--lr_dir", f"{BUCKET}/pairs/LR", "--checkpoint",
      straight, "--out", f"{out}/eval", "--no_progress"
  ]) == 0
  assert "bicubic" in epath.Path(f"{out}/eval/table.md").read_text()
  assert main([
      "upscale", "--checkpoint", straight, f"{BUCKET}/pairs/LR/coffee.png", "--out", f"{out}/up",
      "--no_progress"
  ]) == 0
  with Image.open(io.BytesIO(epath.Path(f"{out}/up/coffee_x4.png").read_bytes())) as image:
    assert image.size == (64, 64)
  assert main(["export", "--layout", "npz", straight, "--out", f"{out}/export"]) == 0
  config, params = read_npz_export(f"{out}/export")
  knee = run_dir.RunDir(straight).stage("moe").result()["knee_step"]
  saved = run_outcome.saved_state(run_dir.RunDir(straight).stage("moe").checkpoint(knee) / "state")
  assert config["experts"] == [0, 1, 2, 3]
  exported, ema = params_io.flatten(params), params_io.flatten(saved["ema_params"])
  assert exported.keys() == ema.keys()
  for key, value in exported.items():
    np.testing.assert_array_equal(value, ema[key], err_msg=key)


@pytest.mark.parametrize("workdir, expected", [
    ("gs://no-such-bucket/run", "not found (does the bucket exist?)"),
    (f"gs://{DENIED_BUCKET}/run", "permission denied"),
])
def test_an_unwritable_bucket_is_one_line_and_exit_2(gcs, workdir, expected, capsys):
  args = [
      "train", "--config", "configs/tiny.py", f"--workdir={workdir}",
      *(f"--config.{k}={v}"
        for k, v in [("model.depth", 1), ("model.hidden", 64), ("model.heads",
                                                                2), ("model.cross_heads", 2)])
  ]
  assert main(args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and expected in err, err
  assert not list(epath.Path(f"gs://{DENIED_BUCKET}").iterdir())


@pytest.mark.slow
def test_a_prefix_without_a_run_and_a_denied_output_are_one_line_and_exit_2(runs, capsys):
  straight, _ = runs
  for args in ([
      "eval", "--hr_dir", f"{BUCKET}/pairs/HR", "--lr_dir", f"{BUCKET}/pairs/LR", "--checkpoint",
      f"{BUCKET}/nothing", "--out", f"{BUCKET}/never"
  ], ["export", f"{BUCKET}/pairs", "--out",
      f"{BUCKET}/never"], ["export", straight, "--out", f"gs://{DENIED_BUCKET}/export"]):
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("linearsr: "), err
  assert err.endswith(f"cannot write gs://{DENIED_BUCKET}/export: permission denied"), err
  assert not epath.Path(f"{BUCKET}/never").exists()
  assert not list(epath.Path(f"gs://{DENIED_BUCKET}").iterdir())


def test_a_params_dir_in_the_bucket_is_written_whole_and_read_back(gcs):
  """What `import --out gs://…` writes and `train.init_from` / `latent.dcae_params` read."""
  rng = np.random.default_rng(0)
  params = {
      "block": {
          "kernel": rng.standard_normal((3, 5)).astype(np.float32),
          "bias": rng.standard_normal(5).astype(np.float32)
      }
  }
  target = f"{BUCKET}/weights/dit"
  params_io.save_params_dir(target, "dit", {"depth": 1}, params)
  config, loaded = params_io.load_params_dir(target, "dit")
  assert config == {"depth": 1}
  for key in ("kernel", "bias"):
    np.testing.assert_array_equal(loaded["block"][key], params["block"][key])
  with pytest.raises(Exception, match="already exists"):
    params_io.save_params_dir(target, "dit", {"depth": 1}, params)
  params_io.save_params_dir(target, "dit", {"depth": 2}, {"other": params["block"]}, overwrite=True)
  assert params_io.load_params_dir(target, "dit")[0] == {"depth": 2}
  assert sorted(p.name for p in epath.Path(target).iterdir()) == [
      params_io.HEADER_FILE, params_io.PARAMS_FILE
  ]


def test_a_params_dir_overwrite_killed_mid_upload_fails_in_one_line_until_rewritten(
    gcs, monkeypatch):
  """The new header is uploaded before the new params: a kill between them must not leave a
  directory that loads the new header over the old params."""
  from linearsr_jax import storage
  params = {"block": {"kernel": np.ones((3, 5), np.float32)}}
  target = f"{BUCKET}/weights/killed"
  params_io.save_params_dir(target, "dit", {"depth": 1}, params)
  upload = storage.upload

  def killed_at_the_params(local, url):
    if url.name == params_io.PARAMS_FILE:
      raise KeyboardInterrupt
    upload(local, url)

  monkeypatch.setattr(storage, "upload", killed_at_the_params)
  with pytest.raises(KeyboardInterrupt):
    params_io.save_params_dir(target, "dit", {"depth": 2},
                              {"block": {"kernel": np.zeros((4, 5), np.float32)}}, overwrite=True)
  monkeypatch.setattr(storage, "upload", upload)
  # the new header is in the bucket, over the old params
  assert '"depth": 2' in (epath.Path(target) / params_io.HEADER_FILE).read_text()
  for read in (params_io.load_params_dir, params_io.read_header):
    with pytest.raises(UserError, match="incomplete: its writing was interrupted") as error:
      read(target, "dit")
    assert "\n" not in str(error.value)
  assert main(["export", target, "--layout", "npz", "--out", f"{BUCKET}/never_killed"]) == 2
  params_io.save_params_dir(target, "dit", {"depth": 3}, params, overwrite=True)
  config, loaded = params_io.load_params_dir(target, "dit")
  assert config == {"depth": 3} and loaded["block"]["kernel"].shape == (3, 5)
  assert sorted(p.name for p in epath.Path(target).iterdir()) == [
      params_io.HEADER_FILE, params_io.PARAMS_FILE
  ]  # the WRITING marker is gone


def _lock_object(workdir) -> dict | None:
  """The lock's JSON, read with the client the lock uses (TF's keeps a stat cache)."""
  from google.cloud import storage as gcs

  bucket, _, prefix = workdir.removeprefix("gs://").partition("/")
  blob = gcs.Client().bucket(bucket).get_blob(f"{prefix}/run.lock")
  return None if blob is None else json.loads(blob.download_as_text())


def test_the_run_lock_in_a_bucket_is_exclusive_and_a_run_that_lost_it_is_told(gcs):
  from linearsr_jax.errors import UserError
  from linearsr_jax.train import run_lock

  workdir = f"{BUCKET}/locked"
  held = run_lock.RunLock(workdir, heartbeat_seconds=0.05, stale_seconds=30).acquire()
  try:
    with pytest.raises(UserError, match=r"is in use by another linearsr train: host .*, pid "):
      run_lock.RunLock(workdir, heartbeat_seconds=0.05, stale_seconds=30).acquire()
    epath.Path(f"{workdir}/run.lock").write_text('{"host": "other"}')  # a run that took it over
    deadline = time.monotonic() + 10
    while held.lost is None and time.monotonic() < deadline:
      time.sleep(0.01)
    with pytest.raises(
        UserError, match="this run's lock was taken over by another linearsr "
        "train: host other, pid None"):
      held.check()
  finally:
    held.release()
  assert _lock_object(workdir) == {"host": "other"}  # not this run's lock any more: kept


def test_a_bucket_lock_whose_heartbeat_stopped_goes_to_one_of_the_runs_racing_for_it(gcs):
  """A VM preempted and replaced: its lock's heartbeat, on GCS's clock, grows old, and of the
  runs that start then, exactly one takes the lock over."""
  from google.cloud import storage as gcs

  from linearsr_jax.errors import UserError
  from linearsr_jax.train import run_lock

  workdir, stale = f"{BUCKET}/preempted", 0.5
  for attempt in range(3):
    epath.Path(f"{workdir}/run.lock").write_text(
        json.dumps({"host": "gone", "pid": 1, "since": "2026-11-30T01:00:00+00:00",
                    "token": "old"}))
    starters = [
        run_lock.RunLock(workdir, heartbeat_seconds=60.0, stale_seconds=stale) for _ in range(4)
    ]
    if attempt == 0:
      with pytest.raises(UserError, match=r"host gone, pid 1, .*; its heartbeat is 0\.\d s "
                         r"old"):
        starters[0].acquire()
    time.sleep(stale + 0.2)
    won, refused = race(starters)
    assert len(won) == 1 and len(refused) == len(starters) - 1
    assert _lock_object(workdir)["token"] == won[0].token
    won[0].release()
    assert _lock_object(workdir) is None
    assert [b.name for b in gcs.Client().list_blobs("runs", prefix="preempted/")] == []


def test_metrics_in_a_bucket_survive_a_kill_during_truncation(gcs):
  path = f"{BUCKET}/metrics/metrics.jsonl"
  log = run_dir.metrics_log(path, resume_step=None)
  for step in (1, 2, 3, 4):
    log.append({"step": step, "train/loss": float(step)})
    log.append({"step": step, "val/psnr_y": 20.0 + step})
  assert [r["step"] for r in run_dir.read_jsonl(path)[0]] == [1, 1, 2, 2, 3, 3, 4, 4]
  # A resume from step 2 killed after the new generation's part 0 but before it deleted the
  # old one: readers already see the truncated log.
  kept = [r for r in run_dir.read_jsonl(path)[0] if r["step"] <= 2]
  run_dir.write_jsonl(epath.Path(path) / "1" / "00000000.jsonl", kept)
  assert run_dir.read_jsonl(path)[0] == kept
  # A kill before part 0 is whole leaves only parts of the new generation: ignored.
  run_dir.write_jsonl(epath.Path(path) / "2" / "00000001.jsonl", [{"step": 9}])
  assert run_dir.read_jsonl(path)[0] == kept
  resumed = run_dir.metrics_log(path, resume_step=2)
  resumed.append({"step": 3, "val/psnr_y": 30.0})
  assert [r["step"] for r in run_dir.read_jsonl(path)[0]] == [1, 1, 2, 2, 3]
  # Generation 1, the one readers took until then, goes one resume later; 0 and 2 go now.
  assert sorted(p.name for p in epath.Path(path).iterdir()) == ["1", "3"]
  # A row after the last evaluation is written when the loop flushes before a checkpoint (a
  # rollback's, which follows no evaluation).
  resumed.append({"step": 4, "guard/rollbacks": 1})
  resumed.flush()
  assert [r["step"] for r in run_dir.read_jsonl(path)[0]] == [1, 1, 2, 2, 3, 4]


def test_a_tfds_folder_written_to_the_bucket_reads_as_the_local_one(gcs, tmp_path):
  from linearsr_jax.data import sources
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("coffee", "chelsea"):
    (photos / f"{name}.png").write_bytes(_png(_photo(name, 48)))
  local = sources.build_tfds_folder(photos, tmp_path / "tfds")
  remote = sources.build_tfds_folder(photos, f"{BUCKET}/tfds")
  assert str(remote) == f"{BUCKET}/tfds/{local.relative_to(tmp_path / 'tfds').as_posix()}"
  here, there = sources.TfdsFolderSource(local), sources.TfdsFolderSource(str(remote))
  assert len(there) == len(here) == 2
  for index in range(2):
    assert there[index]["name"] == here[index]["name"]
    np.testing.assert_array_equal(there[index]["hr"], here[index]["hr"])


def test_latents_encoded_into_the_bucket_by_two_hosts_train_as_local_ones(gcs, tmp_path, capsys):
  from linearsr_jax.commands import encode
  from linearsr_jax.configs.tiny import get_config
  from linearsr_jax.data import latent_crops, pipeline
  config, remote = get_config(), f"{BUCKET}/latents"
  # Host 1 finishes first: latents.json appears only when host 0 sees both shards.
  encode.encode_crops(config, remote, 1, process_index=1, process_count=2, progress=False)
  assert not (epath.Path(remote) / latent_crops.INDEX).exists()
  encode.encode_crops(config, remote, 1, process_index=0, process_count=2, progress=False)
  assert main([
      "data", "encode", "--config", "configs/tiny.py", "--out",
      str(tmp_path / "one"), "--crops_per_image", "1"
  ]) == 0
  assert main(
      ["data", "encode", "--config", "configs/tiny.py", "--out", remote, "--crops_per_image",
       "1"]) == 2
  assert capsys.readouterr().err.strip().endswith(f"output {remote} already exists (pass "
                                                  "--overwrite to replace it)")
  here = latent_crops.LatentCropSource(tmp_path / "one", config.data, 48, 4)
  there = latent_crops.LatentCropSource(remote, config.data, 48, 4)
  assert len(there) == len(here) > 0
  records = {r["name"]: r for r in (there[i] for i in range(len(there)))}
  for record in (here[i] for i in range(len(here))):
    np.testing.assert_array_equal(records[record["name"]]["hr"], record["hr"])
    np.testing.assert_array_equal(records[record["name"]]["latent"], record["latent"])
  data = config.data
  data.hr_latents, data.latents_path, data.batch_size = "precomputed", remote, 2
  tokenize = lambda tags: (np.zeros(2, np.int32), np.zeros(2, bool))
  batch = next(iter(pipeline.make_train_dataset(there, data, tokenize, 0, 1)))
  assert batch["hr_latent"].shape == (2, 16, 16, 48) and batch["lr"].shape == (2, 16, 16, 3)


def test_condition_arrays_tag_mappings_and_extra_scores_read_from_the_bucket(gcs, tmp_path):
  from linearsr_jax.data import tag_sources
  from linearsr_jax.evaluate.evaluate import read_extra_scores
  rng = np.random.default_rng(1)
  array = rng.standard_normal((4, 8)).astype(np.float32)
  folder = epath.Path(BUCKET) / "conditions"
  buffer = io.BytesIO()
  np.save(buffer, array)
  (folder / "a.npy").write_bytes(buffer.getvalue())
  buffer = io.BytesIO()
  np.savez(buffer, a=array, b=2 * array)
  (folder / "all.npz").write_bytes(buffer.getvalue())
  np.testing.assert_array_equal(tag_sources.read_array(str(folder / "a.npy")), array)
  np.testing.assert_array_equal(tag_sources.read_array(str(folder / "all.npz"), "b"), 2 * array)
  assert tag_sources.array_names(str(folder / "all.npz")) == ["a", "b"]
  (folder / "tags.csv").write_text('name,tags\na.png,"cat, fur"\n')
  assert tag_sources.MappingTags(str(folder / "tags.csv"))(str(folder / "a.png")) == ["cat", "fur"]
  (folder / "scores.csv").write_text("name,musiq\na.png,61.5\n")
  assert read_extra_scores(str(folder / "scores.csv")) == {"a": {"musiq": 61.5}}


def _export_npz(run, out):
  assert main(["export", "--layout", "npz", str(run), "--out", str(out)]) == 0
  return dict(np.load(out / "params.npz"))


@pytest.mark.slow
def test_two_processes_with_params_sharded_across_them_train_into_the_bucket_as_one(gcs, tmp_path):
  """pretrain -> 4 experts with params FSDP-sharded over two gloo processes (one CPU device
  each), into a gs:// workdir, ends where the same run in one process with two devices and a
  local workdir does: the data stream, the branch to experts and every restore are independent
  of the process count, and only process 0's small files and both processes' shards reach the
  bucket."""
  tree = dict(SMALL, stage_order="pretrain,moe", mesh=dict(data=1, fsdp=2),
              data=dict(SMALL["data"], batch_size=8),
              stages=dict(pretrain=dict(max_steps=2, esgf=False),
                          moe=dict(max_steps=2)), train=dict(SMALL["train"], eval_every=2))
  env = cli_env()
  two, logs = f"{BUCKET}/two_processes", tmp_path / "logs"
  command = ["bash", "launch/local_multiprocess.sh", "2", *train_command(two, tree=tree)[4:]]
  # gRPC (jax.distributed's coordinator) reads the lowercase https_proxy, and JAX warns that a
  # proxy may hang its initialisation (one run here did: RegisterTask deadline exceeded). curl
  # (TF's GCS client) and Python's HTTP clients read HTTPS_PROXY too, so the bucket still works.
  env_two = {k: v for k, v in env.items() if k != "https_proxy"}
  result = subprocess.run(command, cwd=REPO, env=dict(env_two, LINEARSR_LOG_DIR=str(logs)),
                          capture_output=True, text=True, timeout=900)
  texts = [(logs / f"process_{p}.log").read_text() for p in range(2)]
  assert result.returncode == 0, result.stderr + "\n".join(t[-2000:] for t in texts)
  for p, text in enumerate(texts):
    assert f"process {p} of 2 processes, 1 local of 2 global devices" in text, text[-2000:]
  one = tmp_path / "one_process"
  wait_ok(
      start(train_command(one, tree=tree), tmp_path / "one.log", dict(env, XLA_FLAGS=xla_flags(2))),
      tmp_path / "one.log")
  assert checkpoint_steps(two, "moe") == checkpoint_steps(one, "moe") == [0, 2]
  knees = [[(s["name"], s["knee_step"])
            for s in run_dir.read_json(run_dir.RunDir(run).run_json)["stages"]]
           for run in (two, one)]
  assert knees[0] == knees[1] == [("pretrain", 2), ("moe", 2)], knees
  # The params really were split between the processes: half of each kernel per device.
  saved = ocp.StandardCheckpointHandler().metadata(
      epath.Path(two) / "moe" / "checkpoints" / "2" / "state").tree["params"]
  assert saved["dit"]["patch_embed"]["kernel"].shape == (4, 64, 64)
  exported = [_export_npz(run, tmp_path / f"export_{i}") for i, run in enumerate((two, one))]
  assert sorted(exported[0]) == sorted(exported[1])
  assert exported[0]["dit/patch_embed/kernel"].shape[0] == 4
  for name in exported[0]:
    np.testing.assert_allclose(exported[0][name], exported[1][name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  branch = run_outcome.saved_state(epath.Path(two) / "moe" / "checkpoints" / "0" / "state")
  # the experts trained
  assert not np.array_equal(exported[0]["dit/patch_embed/kernel"],
                            branch["ema_params"]["dit"]["patch_embed"]["kernel"])
