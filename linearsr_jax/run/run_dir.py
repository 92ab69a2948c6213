"""The run directory `linearsr train` writes: its layout, and reading and writing its files.
Every tool that reads a run (eval, upscale, export, knee, the demo) goes through here.

  workdir/
    config.json                  the resolved config; rebuilds the model for the tools
    run.json                     {"stages": [{name, knee_step, fired, reason}, …]}, finished
                                 stages in order
    <stage>/stage.json           {name, num_experts, init_from}: where the stage started (the
                                 previous stage's knee checkpoint, imported weights, or fresh)
    <stage>/result.json          {knee_step, reason, fired, final_step, chosen_step}, written
                                 when the stage ends (knee_step: the step branched from;
                                 chosen_step: ESGF's or the budget rule's choice, the same
                                 unless the reason says why not); a resumed run takes the
                                 stage's knee from it
    <stage>/checkpoints/<step>/  Orbax: state, data_iter, metrics, checksums (of the state)
    <stage>/damaged_checkpoints/ steps that failed to read back intact, set aside
    <stage>/knee_snapshots/<step>/ Orbax: state (the EMA params alone), checksums: each judged
                                 evaluation's while ESGF may still branch from it, the knee's
                                 once the stage has ended (train/knee_snapshots.py)
    <stage>/metrics.jsonl        one line per evaluation and per logged train step (on object
                                 storage: segments, see ObjectStoreMetricsLog)
    <stage>/knee.png             the validation curves with the knee marked
    <stage>/events.*             TensorBoard

JSON files are replaced atomically. metrics.jsonl is appended to, so a kill can leave a
partial last line: `read_jsonl` drops it with a warning. A kill between an atomic write's
temporary file and its rename leaves `.<name>.<hex>.tmp`: the next run removes it.

The workdir may be a gs:// URL (see storage.py); then every path here is an epath.
"""

import dataclasses
import json
import logging
import re

from linearsr_jax import disk_space, lead_decides, storage
from linearsr_jax.atomic import atomic_file
from linearsr_jax.errors import UserError
from linearsr_jax.run import kill_points

log = logging.getLogger(__name__)

# Orbax on object storage writes a step in place and marks it finished with this file last
# (there is no rename to make it appear whole).
COMMIT_SUCCESS = "commit_success.txt"


@dataclasses.dataclass(frozen=True)
class StageDir:
  path: object  # pathlib.Path or epath.Path: see storage.path

  def __post_init__(self):
    object.__setattr__(self, "path", storage.path(self.path))

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def stage_json(self):
    return self.path / "stage.json"

  @property
  def result_json(self):
    return self.path / "result.json"

  @property
  def checkpoints(self):
    return self.path / "checkpoints"

  @property
  def damaged_checkpoints(self):
    return self.path / "damaged_checkpoints"

  @property
  def metrics_jsonl(self):
    return self.path / "metrics.jsonl"

  @property
  def knee_png(self):
    return self.path / "knee.png"

  @property
  def knee_snapshots(self):
    return self.path / "knee_snapshots"

  def checkpoint(self, step: int):
    return self.checkpoints / str(step)

  def checkpoint_steps(self) -> list:
    """Steps of the finished checkpoints."""
    return _finished_steps(self.checkpoints)

  def snapshot_steps(self) -> list:
    """Steps of the finished knee snapshots (EMA params only)."""
    return _finished_steps(self.knee_snapshots)

  def ema_params_dir(self, step: int):
    """The step directory to read `step`'s EMA params from: its knee snapshot (the smaller
    read), else its checkpoint; None when neither was kept. Both hold `state/ema_params` and
    its checksums."""
    for folder, steps in ((self.knee_snapshots, self.snapshot_steps), (self.checkpoints,
                                                                       self.checkpoint_steps)):
      if step in steps():
        return folder / str(step)
    return None

  def result(self):
    """result.json, or None while the stage has not ended."""
    return read_json(self.result_json)


@dataclasses.dataclass(frozen=True)
class RunDir:
  path: object

  def __post_init__(self):
    object.__setattr__(self, "path", storage.path(self.path))

  @property
  def config_json(self):
    return self.path / "config.json"

  @property
  def run_json(self):
    return self.path / "run.json"

  def stage(self, name: str) -> StageDir:
    return StageDir(self.path / name)

  def stages(self) -> list:
    """The stages that have started (a stage.json), in name order."""
    return [StageDir(p.parent) for p in sorted(self.path.glob("*/stage.json"))]

  def is_run(self) -> bool:
    return self.config_json.is_file()


def step_location(step_dir) -> tuple:
  """(RunDir, stage name, step) of a step directory, <run>/<stage>/checkpoints/<step> or
  <run>/<stage>/knee_snapshots/<step>."""
  return RunDir(step_dir.parents[2]), step_dir.parents[1].name, int(step_dir.name)


def _finished_steps(folder) -> list:
  """Steps of the finished Orbax step directories in `folder` (its temporary ones are not
  digits; on object storage a step is finished once COMMIT_SUCCESS is written)."""
  if not folder.is_dir():
    return []
  return sorted(
      int(p.name)
      for p in folder.iterdir()
      if p.name.isdigit() and (not storage.is_url(p) or (p / COMMIT_SUCCESS).exists()))


def write_json(path, obj):
  with atomic_file(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def read_json(path):
  """The file's JSON value, or None when it does not exist; an undecodable file is one line."""
  path = storage.path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: damaged JSON ({e})") from None


def read_jsonl(path) -> tuple:
  """(the JSON objects of a JSONL file in order, how many lines were unreadable); ([], 0) when
  it does not exist. A last line that does not parse is what a kill during an append leaves:
  dropped with a warning. An unreadable line elsewhere is a damaged file, also dropped and
  warned about, with its line number. On object storage the file is ObjectStoreMetricsLog's
  segments."""
  path = storage.path(path)
  if storage.is_url(path):
    text = ObjectStoreMetricsLog.read_text(path)
  elif path.exists():
    text = path.read_text(encoding="utf-8")
  else:
    return [], 0
  lines = text.split("\n")
  rows, unreadable = [], 0
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
      continue
    unreadable += 1
    if number == len(lines):  # no newline after it: the append was cut short
      log.warning("%s: dropped a partial last line (%d bytes), left by an interrupted write", path,
                  len(line))
    else:
      log.warning("%s: line %d is not a JSON object; skipped", path, number)
  return rows, unreadable


def write_jsonl(path, rows):
  with atomic_file(path, "w") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def append_jsonl(path, row: dict):
  line = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
  path = storage.path(path)
  disk_space.ensure_room(path.parent, len(line), f"a line of {path.name}")
  try:
    with open(path, "ab") as f:
      # Two writes, as a large line may take anyway: a kill between them leaves the partial
      # last line that read_jsonl drops.
      f.write(line[:len(line) // 2])
      f.flush()
      kill_points.reached("metrics_append")
      f.write(line[len(line) // 2:])
  except OSError as e:
    if disk_space.is_full_disk(e):
      raise disk_space.full(path.parent, len(line), f"a line of {path.name}") from None
    raise


_ATOMIC_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def remove_stale_temporaries(root):
  """Deletes the temporary files of atomic writes (atomic.py's `.<name>.<hex>.tmp`) that a
  killed run left under `root`. Only for the holder of the run lock: no live writer owns them.
  Object storage has none: an object is written whole."""
  if storage.is_url(root):
    return
  for path in root.rglob(".*.tmp"):
    if _ATOMIC_TEMPORARY.fullmatch(path.name) and path.is_file():
      path.unlink()


def metrics_log(path, resume_step, write: bool = True):
  """The metrics log of a stage: appended to on a local disk, segments on object storage."""
  cls = ObjectStoreMetricsLog if storage.is_url(path) else MetricsLog
  return cls(storage.path(path), resume_step, write)


class MetricsLog:
  """metrics.jsonl: append-only, truncated on resume to what the restored checkpoint saw, so a
  resumed run writes exactly the lines a run that never stopped would have."""

  def __init__(self, path, resume_step, write: bool = True):
    """`write`: whether this process writes the file (one process of a multi-host run does)."""
    self.path, self.write = path, write
    # Process 0's reading on every process: ESGF judges the same rows on every host.
    self.rows = [] if resume_step is None else lead_decides.broadcast(
        [r for r in read_jsonl(path)[0] if r.get("step", resume_step + 1) <= resume_step])
    if write:
      self._rewrite(self.rows)

  def _rewrite(self, rows):
    write_jsonl(self.path, rows)

  def append(self, row: dict):
    self.rows.append(row)
    if self.write:
      append_jsonl(self.path, row)

  def flush(self):
    """Called before each checkpoint; here every row is on disk once appended."""

  def evaluations(self):
    return [r for r in self.rows if is_evaluation(r)]


class ObjectStoreMetricsLog(MetricsLog):
  """metrics.jsonl on object storage, where an object cannot be appended to: an append there
  rewrites the whole object, which over a long run is quadratic in its length. Instead the log
  is a folder of whole objects, `metrics.jsonl/<generation>/<part>.jsonl`:

  - rows are buffered and written as one new part at each evaluation and each `flush` (the
    loop flushes before each checkpoint, so everything a resume keeps is written before the
    checkpoint is);
  - a resume truncates by starting the next generation, whose part 0 holds the kept rows;
  - readers take the newest generation that has its part 0: a kill before that part is whole
    leaves the previous generation the log. Generations older than the previous one are
    deleted after: the previous one stays, as a reader on another host that listed the folder
    just before may still be reading it (it goes at the next resume).
  """

  def __init__(self, path, resume_step, write: bool = True):
    self.pending = []
    self.part = 1
    super().__init__(path, resume_step, write)

  @staticmethod
  def _folders(path) -> list:
    """The generation folders, oldest first, whole or not."""
    if not path.is_dir():
      return []
    return sorted((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))

  @classmethod
  def read_text(cls, path) -> str:
    whole = [p for p in cls._folders(path) if (p / _part_name(0)).exists()]
    if not whole:
      return ""
    parts = sorted((p for p in whole[-1].iterdir() if p.name.endswith(".jsonl")),
                   key=lambda p: p.name)
    return "".join(p.read_text(encoding="utf-8") for p in parts)

  def _rewrite(self, rows):
    """A new generation, numbered past every folder there (a killed truncation may have left
    parts of one without its part 0), then all but it and the generation readers took until
    now go."""
    old = self._folders(self.path)
    read = [p for p in old if (p / _part_name(0)).exists()][-1:]
    self.generation = self.path / str(int(old[-1].name) + 1 if old else 0)
    write_jsonl(self.generation / _part_name(0), rows)
    for folder in old:
      if folder not in read:
        folder.rmtree()

  def append(self, row: dict):
    self.rows.append(row)
    self.pending.append(row)
    if is_evaluation(row):
      self.flush()

  def flush(self):
    if self.write and self.pending:
      write_jsonl(self.generation / _part_name(self.part), self.pending)
      kill_points.reached("metrics_append")
      self.pending, self.part = [], self.part + 1


def is_evaluation(row: dict) -> bool:
  return any(k.startswith("val/") for k in row)


def _part_name(index: int) -> str:
  return f"{index:08d}.jsonl"
