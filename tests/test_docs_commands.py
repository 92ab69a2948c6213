"""Every `linearsr …` command the docs show still works as written, as far as it can be checked
without running it: README.md, docs/*.md and launch/* are read for commands (code blocks and
inline code, `\\` continuations followed), and each is parsed by the CLI's own parsers
(cli.build_parser, then the command's parse_flags), which refuses an unknown option and a
`--config.KEY` its config file does not have. A command with a config then goes through the
checks the run makes before touching data: config_check.validate (with the devices of
`compile --topology`), the latent space's weights (latent_space.make_latent_space) and the
settings each data source needs (pipeline.make_source, Run._train_source). No weights or
compiles, and no data but a replay of each `linearsr data tfds` the docs show on two small
images, whose output a `tfds_folder` source of the docs must open; the other readers are
replaced by a stand-in, and a DC-AE params dir that is not here is taken to hold SANA's DC-AE
(the only one the docs import).

Skipped, as placeholders: synopses with `…`, `...`, `[optional]`, `(a | b)` or `<name>` in them
(the command table, usage lines) and, in inline code only, with upper-case metavariables
(`--out D`); inline mentions of a command's name (`linearsr compile`) or of a name and the one
option a sentence is about (`linearsr eval --checkpoint`). The launch scripts' own lines pass
"$@" on; their usage comments are checked, as the `linearsr train` each launcher runs.
"""

import contextlib
import importlib
import io
import os
import re
import shlex
import types

import pytest

from repo_paths import REPO

LINEARSR = re.compile(r"(.*/)?linearsr$")
PYTHON = re.compile(r"(.*/)?python(3(\.\d+)?)?$")
# launcher -> (its action that runs `linearsr train`, "" when it has none; how many leading
# arguments are its own before `linearsr train`'s)
LAUNCHERS = {
    "launch/gpu_node.sh": ("", 0), "launch/local_multiprocess.sh": ("", 1),
    "launch/tpu_pod.sh": ("train", 0)
}
PREFIXES = {"time", "srun", "exec", "nohup"}
OPERATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"…|\.\.\.|[\[\]()<>|]")
METAVAR = re.compile(r"^[A-Z]+$")  # `--out D`, `SRC` in inline synopses
REDIRECT = re.compile(r"^(\d|&)?[<>]")  # a redirect ends a command's arguments
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_files() -> list:
  return [
      REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(
          (REPO / "launch").iterdir())
  ]


def _logical_lines(lines):
  """(first line number, text) with `\\` continuations joined."""
  pending, start = "", None
  for number, line in lines:
    if start is None:
      start = number
    if line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
      continue
    yield start, pending + line
    pending, start = "", None
  if start is not None:
    yield start, pending


def _snippets(path):
  """(line, text, inline) of the shell lines of a Markdown file's code blocks (not Python ones)
  and of its inline code; of a launch script, its comment lines."""
  lines = path.read_text().splitlines()
  if path.suffix != ".md":
    comments = [(i + 1, re.sub(r"^#\s?", "", l.strip()))
                for i, l in enumerate(lines)
                if l.strip().startswith("#") and not l.startswith("#!")]
    yield from ((n, t, False) for n, t in _logical_lines(comments))
    yield from ((n, t, True) for n, line in comments for t in re.findall(r"`([^`]+)`", line))
    return
  block, language = [], None
  for i, line in enumerate(lines, 1):
    if line.lstrip().startswith("```"):
      if language is None:
        language = line.strip()[3:].strip() or "text"
        block = []
      else:
        if language != "python":
          yield from ((n, t, False) for n, t in _logical_lines(block))
        language = None
      continue
    if language is not None:
      block.append((i, line))
    else:
      yield from ((i, t, True) for t in re.findall(r"`([^`\n]+)`", line.replace("\\|", "|")))


def _argv(tokens):
  """The `linearsr` arguments of one simple command's tokens, or None when it runs something
  else (a launcher's own arguments dropped, its `linearsr train` added)."""
  while tokens and (ENV.match(tokens[0]) or tokens[0] in PREFIXES):
    tokens = tokens[1:]
  if not tokens:
    return None
  if LINEARSR.match(tokens[0]):
    return tokens[1:]
  if PYTHON.match(tokens[0]) and tokens[1:3] == ["-m", "linearsr_jax.commands.cli"]:
    return tokens[3:]
  launcher = next((name for name in LAUNCHERS if tokens[0].endswith(name)), None)
  if launcher:
    action, own = LAUNCHERS[launcher]
    rest = tokens[1:]
    if action:
      if rest[:1] != [action]:
        return None  # create / setup / delete / --help: no linearsr command
      rest = rest[1:]
    return ["train", *rest[own:]] if rest else None
  return None


def find_commands():
  """(where, text, argv) of every `linearsr` command, and (where, text) of the placeholders."""
  commands, placeholders = [], []
  for path in doc_files():
    name = path.relative_to(REPO).as_posix()
    for line, text, inline in _snippets(path):
      try:
        tokens = shlex.split(text, comments=not inline)
      except ValueError:  # an unbalanced quote: prose in backticks, or a broken command
        if not inline and re.search(r"linearsr|launch/", text):
          commands.append((f"{name}:{line}", text, None))
        continue
      simple, redirected = [[]], False
      for token in tokens:
        if token in OPERATORS:
          simple.append([])
          redirected = False
        elif REDIRECT.match(token) or redirected:
          redirected = True
        else:
          simple[-1].append(token)
      for part in simple:
        argv = _argv(part)
        if argv is None:
          continue
        where = f"{name}:{line}"
        options = sum(a.startswith("-") for a in argv)
        if any(PLACEHOLDER.search(a) for a in argv):
          placeholders.append((where, text))
        elif inline and (any(METAVAR.match(a) for a in argv) or options <= 1):
          # A synopsis with metavariables, a command's name (`linearsr data tfds`) or a name
          # with the option the sentence is about (`linearsr eval --checkpoint`).
          placeholders.append((where, text))
        else:
          commands.append((where, " ".join(part), argv))
  return commands, placeholders


COMMANDS, PLACEHOLDERS = find_commands()


class Unread:
  """Stands in for a data source or tag mapping: made, never read."""

  def __init__(self, *args, **kwargs):
    pass


@pytest.fixture(scope="module")
def tfds_replays(tmp_path_factory) -> dict:
  """{the --out of each `linearsr data tfds` in the docs: where the same command, run here on two
  small images, wrote}: a `tfds_folder` path in the docs must then open as the dataset."""
  import numpy as np
  from PIL import Image

  from linearsr_jax.commands import cli

  replays = {}
  for _, _, argv in COMMANDS:
    if argv[:2] != ["data", "tfds"]:
      continue
    args = cli.build_parser("data").parse_args(argv)
    images = tmp_path_factory.mktemp("images")
    side = max(args.min_size, 32)
    for i in range(2):
      pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), np.uint8)
      Image.fromarray(pixels).save(images / f"{i}.png")
    out = tmp_path_factory.mktemp("tfds") / "out"
    with contextlib.redirect_stdout(io.StringIO()):
      assert cli.main([
          *argv[:2],
          str(images), *argv[3:argv.index("--out")], *argv[argv.index("--out") + 2:], "--out",
          str(out)
      ]) == 0
    replays[args.out.rstrip("/")] = str(out)
  return replays


@pytest.fixture
def no_reading(monkeypatch, tfds_replays):
  """The data readers replaced by Unread, but for the TFDS folders the docs make with `linearsr
  data tfds` (read where its replay wrote); a DC-AE params dir not here reads as SANA's DC-AE."""
  from linearsr_jax.configs import dcae_f32c32_sana
  from linearsr_jax.data import latent_crops, sources, tag_sources
  from linearsr_jax.errors import UserError
  from linearsr_jax import params_io

  tfds_folder = sources.TfdsFolderSource

  def replayed_tfds_folder(path, split="train"):
    path = str(path)
    for out, local in tfds_replays.items():
      if path == out or path.startswith(out + "/"):
        try:
          return tfds_folder(local + path[len(out):], split)
        except UserError as e:
          raise UserError(str(e).replace(local, out)) from None
    return Unread()

  for module, names in [(sources, ["DemoSource", "FolderSource", "PairedSource", "Div2kSource"]),
                        (tag_sources, ["MappingTags", "MappingArrays"]),
                        (latent_crops, ["LatentCropSource"])]:
    for name in names:
      monkeypatch.setattr(module, name, Unread)
  monkeypatch.setattr(sources, "TfdsFolderSource", replayed_tfds_folder)
  read_header, sana_dcae = params_io.read_header, dcae_f32c32_sana.get_config().to_dict()
  monkeypatch.setattr(
      params_io, "read_header", lambda path, kind: (read_header(path, kind)
                                                    if os.path.exists(path) else sana_dcae))
  monkeypatch.setattr(params_io, "load_params_dir", lambda path, kind: (None, None))
  monkeypatch.chdir(REPO)


def _parse(argv):
  """cli.main's parse: (args, the arguments passed through to the command)."""
  from linearsr_jax.commands import cli

  parser = cli.build_parser(next((a for a in argv if not a.startswith("-")), None))
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
      args, extra = parser.parse_known_args(argv)
  except SystemExit as e:
    if e.code == 0:
      return None, []  # --help
    raise AssertionError(stderr.getvalue().strip().splitlines()[-1]) from None
  module = importlib.import_module(args._module)
  if extra and not getattr(module, "PASSES_FLAGS_THROUGH", False):
    raise AssertionError(f"unrecognized arguments: {' '.join(extra)}")
  return args, extra


# What each command needs before it starts, beyond its config: the latent space's weights
# (`compile` reads none) and the training / validation images.
TRAIN, ENCODE = ("weights", "train data", "eval data"), ("weights", "train data")


def _config(args, extra):
  """(the config the command loads, through parse_flags: its overrides and
  config_check.validate; the devices it names, or None; what it needs), or (None, None, ())."""
  from linearsr_jax.commands import cli_compile
  from linearsr_jax.commands.config_flags import parse_flags

  command = args.command
  if command == "train":
    return parse_flags(extra)[0], None, TRAIN
  if command == "data":
    if args.data_command == "encode":
      return parse_flags([*extra, "--workdir", os.devnull], command="data encode")[0], None, ENCODE
    if args.data_command == "teacher_targets" and extra:  # else the run's config.json
      return parse_flags(extra, command="data teacher_targets")[0], None, TRAIN
    if extra:
      raise AssertionError(f"data {args.data_command}: unrecognized arguments: {' '.join(extra)}")
  if command == "compile":
    own, rest = cli_compile._own_flags(extra)
    pod, _ = cli_compile.parse_topology(own.topology)
    config = parse_flags(rest, command="compile")[0]
    if own.sampler_image:
      return cli_compile.one_chip_config(config), 1, ()
    return config, pod.chips, ()
  if command == "demo":  # it trains on the photographs' folders it writes
    overrides = [f"--config.{kv}" for kv in args.set]
    config = parse_flags(["--config", args.config, "--workdir", os.devnull, *overrides],
                         command="demo")[0]
    return config, None, ("weights",)
  return None, None, ()


def _check_requirements(config, devices, needs):
  """What the run checks before it reads data: the mesh on the command's devices, the latent
  space's weights, each data source's settings."""
  from linearsr_jax import config_check
  from linearsr_jax.data import pipeline
  from linearsr_jax.models.latent_space import make_latent_space
  from linearsr_jax.train import loop

  if devices is not None:
    config_check.mesh_sizes(config, devices)
  latent_space = make_latent_space(config.latent, load_params="weights" in needs)
  if "train data" in needs:
    loop.Run._train_source(types.SimpleNamespace(config=config, latent_space=latent_space))
  if "eval data" in needs:
    pipeline.make_source(config.data, "eval", config.tags.encoder)


def check(argv):
  """Raises (AssertionError or UserError, one line) where the command would stop early."""
  if argv is None:
    raise AssertionError("a shell cannot split it (an unbalanced quote)")
  args, extra = _parse(argv)
  if args is None:
    return
  config, devices, needs = _config(args, extra)
  if config is not None:
    _check_requirements(config, devices, needs)


def test_the_docs_show_commands():
  """The reader finds the commands where they are (a silent miss would pass everything)."""
  found = {where.split(":")[0] for where, _, _ in COMMANDS}
  for name in [
      "README.md", "docs/usage.md", "docs/training.md", "docs/tpu.md", "docs/gpu.md",
      "launch/tpu_pod.sh", "launch/gpu_node.sh", "launch/local_multiprocess.sh"
  ]:
    assert name in found, f"no linearsr command found in {name}"
  assert len(COMMANDS) >= 50, len(COMMANDS)
  # Placeholders are synopses and names; none of them has a config key to check.
  assert not [
      p for p in PLACEHOLDERS if "--config." in p[1] and "…" not in p[1] and "..." not in p[1]
  ], PLACEHOLDERS


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "configs/tiny.py", "--workdir", "w", "--config.data.batch_sise=4"
     ], "the config has no key 'batch_sise'"),
    (["train", "--config", "configs/tiny.py", "--workdir", "w", "--config.data.source.kind=folder"
     ], "data.source.kind=folder needs data.source.path"),
    (["train", "--config", "configs/sana600m_x4.py", "--workdir", "w"
     ], "latent.kind='dcae' needs weights"),
    (["compile", "--config", "configs/sana600m_x4.py", "--topology", "v5e-1"
     ], "needs a multiple of 4 devices"),
    (["eval", "--hr_dir", "HR", "--lr_dir", "LR", "--out", "o", "--stpes", "4"
     ], "unrecognized arguments: --stpes 4"),
])
def test_the_check_catches(no_reading, argv, message):
  """The checker is not a rubber stamp: each of these is a mistake a doc could hold."""
  from linearsr_jax.errors import UserError

  with pytest.raises((AssertionError, UserError), match=re.escape(message)):
    check(argv)


@pytest.mark.parametrize("where, command, argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command(no_reading, where, command, argv):
  from linearsr_jax.errors import UserError

  try:
    check(argv)
  except (AssertionError, UserError) as e:
    pytest.fail(f"{where}: `{command}` would stop: {e}", pytrace=False)


def _anchors(path) -> set:
  """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to
  hyphens."""
  text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
  return {
      re.sub(r"[^\w\- ]", "",
             h.strip().lower()).replace(" ", "-") for h in re.findall(r"(?m)^#+ (.*)$", text)
  }


def test_links_resolve():
  """Every relative link of README.md and docs/*.md names a file that exists, and its heading."""
  broken = []
  for path in doc_files():
    if path.suffix != ".md":
      continue
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
      if re.match(r"[a-z]+://", target):
        continue
      file, _, anchor = target.partition("#")
      linked = (path.parent / file).resolve() if file else path
      if not linked.exists():
        broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
      elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
        broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
  assert not broken, "\n".join(broken)
