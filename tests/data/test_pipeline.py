"""The grain pipeline: determinism, resume, host shards, workers, eval pairs, global batches."""

import json

import grain
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec
from PIL import Image

from linearsr_jax import sharding
from linearsr_jax.data import eval_set, pipeline, sources
from linearsr_jax.errors import UserError

TAG_LENGTH = 4


def tokenize(tags):
  """A deterministic stand-in for the tag encoder: code-point sums, padded to TAG_LENGTH."""
  ids = np.zeros(TAG_LENGTH, np.int32)
  mask = np.zeros(TAG_LENGTH, bool)
  for i, tag in enumerate(tags[:TAG_LENGTH]):
    ids[i], mask[i] = sum(map(ord, tag)) % 10007, True
  return ids, mask


def first_tag_id(name):
  return tokenize(list(sources.DEMO_IMAGES[name]))[0][0]


@pytest.fixture
def config():
  cfg = pipeline.default_config()
  cfg.crop_size, cfg.batch_size, cfg.seed = 32, 4, 7
  cfg.eval.crop_size, cfg.eval.batch_size = 32, 2
  return cfg


@pytest.fixture(scope="module")
def demo():
  return sources.DemoSource("train")


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_documented_shapes_and_ranges(demo, config):
  (batch,) = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 1)
  assert set(batch) == {"hr", "lr", "cond", "cond_mask"}
  assert batch["hr"].shape == (4, 32, 32, 3) and batch["hr"].dtype == np.float32
  assert batch["lr"].shape == (4, 8, 8, 3) and batch["lr"].dtype == np.float32
  assert batch["cond"].shape == (4, TAG_LENGTH) and batch["cond"].dtype == np.int32
  assert batch["cond_mask"].dtype == bool and batch["cond_mask"][:, 0].all()
  for key in ("hr", "lr"):
    assert -1 <= batch[key].min() < 0 < batch[key].max() <= 1
  # LR pixels are 8-bit levels mapped to [-1, 1].
  levels = (batch["lr"] + 1) / 2 * 255
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_same_seed_same_batches_other_seed_other_batches(demo, config):
  first = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 3)
  again = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 3)
  assert_same(first, again)
  config.seed = 8
  other = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 3)
  assert not np.array_equal(first[0]["lr"], other[0]["lr"])
  assert not np.array_equal(first[0]["hr"], other[0]["hr"])


def test_resume_from_saved_state_gives_the_same_batches(demo, config):
  reference = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 6)
  iterator = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # as it is stored on disk
  resumed = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  resumed.set_state(state)
  assert_same(take(resumed, 3), reference[3:])


def test_resume_through_orbax_with_grains_handler(demo, config, tmp_path):
  import orbax.checkpoint as ocp

  reference = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 4)
  iterator = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  take(iterator, 2)
  handlers = {"data_iter": grain.checkpoint.CheckpointHandler()}
  with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
    manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
  fresh = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
    manager.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  assert_same(take(fresh, 2), reference[2:])


@pytest.mark.slow
def test_workers_give_the_same_batches_and_resume(demo, config):
  reference = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 4)
  config.num_workers = 2
  iterator = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  assert_same(take(iterator, 2), reference[:2])
  state = iterator.get_state()
  iterator.close()
  resumed = iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1))
  resumed.set_state(state)
  assert_same(take(resumed, 2), reference[2:])
  resumed.close()


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_split_the_one_host_stream_by_rows(demo, config, hosts):
  """Any number of hosts trains on the same global batches: host p's batch k is rows
  [p·B/P, (p+1)·B/P) of the one-host batch k, degradations included."""
  config.batch_size = 4
  one_host = take(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)), 3)
  per_host = [
      take(iter(pipeline.make_train_dataset(demo, config, tokenize, p, hosts)), 3)
      for p in range(hosts)
  ]
  for k, reference in enumerate(one_host):
    for key in reference:
      rows = np.concatenate([per_host[p][k][key] for p in range(hosts)])
      np.testing.assert_array_equal(rows, reference[key], err_msg=f"batch {k} {key}")
  assert not np.array_equal(per_host[0][0]["hr"], per_host[1][0]["hr"])


def test_eval_examples_are_fixed_and_cropped(config):
  held_out = sources.DemoSource("eval")
  first = eval_set.make_eval_examples(held_out, config, tokenize)
  again = eval_set.make_eval_examples(held_out, config, tokenize)
  assert [e["name"] for e in first] == held_out.names
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["lr"], b["lr"])
    assert a["hr"].shape == (32, 32, 3) and a["lr"].shape == (8, 8, 3)
  # The center crop of the first image, mapped to [-1, 1].
  photo = held_out[0]["hr"]
  top, left = (photo.shape[0] - 32) // 2, (photo.shape[1] - 32) // 2
  np.testing.assert_allclose(first[0]["hr"], photo[top:top + 32, left:left + 32] * 2 - 1, atol=1e-6)
  (batch,) = list(eval_set.eval_batches(first, 2))
  assert batch["hr"].shape == (2, 32, 32, 3) and batch["name"] == held_out.names


def test_full_image_eval_is_trimmed_to_whole_latent_cells(tmp_path, config):
  """A DC-AE (factor 32) encodes only HR sides that are multiples of 32: full-image eval pairs
  are center-trimmed to them, synthetic (chelsea, 300×451) and real pairs alike."""
  config.eval.crop_size = 0
  (chelsea,) = [
      e for e in eval_set.make_eval_examples(sources.DemoSource("eval"), config, tokenize, align=32)
      if e["name"] == "chelsea"
  ]
  assert chelsea["hr"].shape == (288, 448, 3) and chelsea["lr"].shape == (72, 112, 3)
  (tmp_path / "LR").mkdir(), (tmp_path / "HR").mkdir()
  rng = np.random.default_rng(0)
  lr = rng.integers(0, 256, (19, 21, 3), dtype=np.uint8)
  hr = rng.integers(0, 256, (76, 84, 3), dtype=np.uint8)
  Image.fromarray(lr).save(tmp_path / "LR" / "a.png")
  Image.fromarray(hr).save(tmp_path / "HR" / "a.png")
  config.eval_source.kind = "paired"
  config.eval_source.lr_path = str(tmp_path / "LR")
  config.eval_source.hr_path = str(tmp_path / "HR")
  (pair,) = eval_set.make_eval_examples(pipeline.make_source(config, "eval"), config, tokenize,
                                        align=32)
  # LR 19×21 -> 16×16 (whole 8-pixel LR cells), centred: rows 1..17, cols 2..18; the HR crop
  # is the same region of the scene, 4× the LR offsets.
  np.testing.assert_allclose((pair["lr"] + 1) / 2, lr[1:17, 2:18] / 255, atol=1e-6)
  np.testing.assert_allclose((pair["hr"] + 1) / 2, hr[4:68, 8:72] / 255, atol=1e-6)


def test_full_image_eval_on_paired_folders(tmp_path, config):
  (tmp_path / "LR").mkdir(), (tmp_path / "HR").mkdir()
  rng = np.random.default_rng(0)
  for name, (h, w) in {"a": (6, 5), "b": (6, 5), "c": (4, 7)}.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3),
                                 dtype=np.uint8)).save(tmp_path / "LR" / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (h * 4, w * 4, 3),
                                 dtype=np.uint8)).save(tmp_path / "HR" / f"{name}.png")
  config.eval_source.kind = "paired"
  config.eval_source.lr_path = str(tmp_path / "LR")
  config.eval_source.hr_path = str(tmp_path / "HR")
  config.eval.crop_size = 0
  source = pipeline.make_source(config, "eval")
  examples = eval_set.make_eval_examples(source, config, tokenize)
  np.testing.assert_allclose((examples[2]["lr"] + 1) / 2,
                             np.asarray(Image.open(tmp_path / "LR" / "c.png")) / 255, atol=1e-6)
  batches = list(eval_set.eval_batches(examples, 4))
  assert [b["name"] for b in batches] == [["a", "b"], ["c"]]  # sizes differ: not stacked
  assert batches[1]["hr"].shape == (1, 16, 28, 3)


def test_global_batch_is_sharded_as_the_mesh_says(demo, config):
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  config.batch_size = 8
  local = next(iter(pipeline.make_train_dataset(demo, config, tokenize, 0, 1)))
  batch = pipeline.make_global_batch(local, mesh)
  assert set(batch) == {"hr", "lr", "cond", "cond_mask"}
  for key, array in batch.items():
    assert array.shape == local[key].shape
    assert array.sharding.spec == PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(array), local[key])
  # Device (d, f, t) holds rows of block 2d + f (2 rows each), replicated over t.
  for d in range(2):
    for f in range(2):
      for t in range(2):
        device = mesh.devices[d, f, t]
        (shard,) = [s for s in batch["lr"].addressable_shards if s.device == device]
        np.testing.assert_array_equal(np.asarray(shard.data),
                                      local["lr"][(2 * d + f) * 2:(2 * d + f + 1) * 2])
  only_data = Mesh(np.asarray(jax.devices()).reshape(8, 1), ("data", "tensor"))
  assert sharding.batch_sharding(only_data).spec == PartitionSpec(("data",))
  # The batch follows the rules' activation_batch, as the model's activations do.
  assert sharding.batch_sharding(mesh, [("activation_batch", "fsdp")]).spec == PartitionSpec(
      ("fsdp",))


def test_config_errors(demo, config):
  config.crop_size = 30
  with pytest.raises(UserError, match="not divisible by the scale"):
    pipeline.make_train_dataset(demo, config, tokenize, 0, 1)
  config.crop_size, config.batch_size = 32, 3
  with pytest.raises(UserError, match="not divisible by 2 hosts"):
    pipeline.make_train_dataset(demo, config, tokenize, 0, 2)
  config.source.kind = "s3"
  with pytest.raises(UserError, match="unknown data source"):
    pipeline.make_source(config)
  config.eval_source.kind = "paired"
  with pytest.raises(UserError, match="needs data.eval_source.lr_path"):
    pipeline.make_source(config, "eval")


def test_workers_need_a_picklable_tokenize(demo, config):
  config.num_workers = 1
  with pytest.raises(UserError, match="picklable tokenize"):
    pipeline.make_train_dataset(demo, config, lambda tags: tokenize(tags), 0, 1)


def _run_data_command(argv):
  import argparse

  from linearsr_jax.commands import cli_data

  parser = argparse.ArgumentParser()
  cli_data.add_arguments(parser)
  return cli_data.run(parser.parse_args(argv))


def test_degrade_command_writes_seeded_pairs_in_the_benchmark_layout(tmp_path, config):
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.jpg", "b.png"):
    Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(photos / name)
  for out in ("one", "two"):
    assert _run_data_command(
        ["degrade",
         str(photos), "--out",
         str(tmp_path / out), "--crop", "32", "--seed", "5"]) == 0
  pairs = sources.PairedSource(tmp_path / "one" / "LR", tmp_path / "one" / "HR")
  assert pairs.scale == 4 and pairs.names == ["a", "b"]
  again = sources.PairedSource(tmp_path / "two" / "LR", tmp_path / "two" / "HR")
  np.testing.assert_array_equal(pairs[1]["lr"], again[1]["lr"])
  # The same pixels as the eval pipeline's pair for that image and seed.
  config.eval.seed = 5
  expected = eval_set.eval_example(sources.FolderSource(photos)[1], 1, config, tokenize)
  np.testing.assert_allclose(pairs[1]["lr"] * 2 - 1, expected["lr"], atol=1e-6)
  with pytest.raises(UserError, match="already exists"):
    _run_data_command(["degrade", str(photos), "--out", str(tmp_path / "one")])
