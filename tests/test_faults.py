"""Faults survived: corrupt or non-finite checkpoints, a full disk, two trainers, a damaged log.

docs/faults.md lists each fault, what the run does and what is kept; each row has a test here
(bad settings and inputs are in test_errors.py).
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from glm_jax import checkpoints, digests, metrics_writer, plot, run_lock

from conftest import REPO_ROOT, multi_device_env, run_module, run_script, write_tiny_gin
from test_checkpoints import CFG, _abstract, _assert_same, _manager, _state

# ----------------------------------------------------------------------------- digests


def _arrays():
  rng = np.random.default_rng(0)
  return {"f32": rng.standard_normal((5, 7)).astype(np.float32),
          "bf16": rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16),
          "i32": np.arange(6, dtype=np.int32) * 7919, "scalar": np.float32(2.5),
          "bool": np.array([True, False, True, True])}


def test_digests_match_on_host_and_device_and_change_with_any_element():
  tree = _arrays()
  host, host_finite = digests.host_tree_digests(tree)
  device, device_finite = digests.tree_digests(jax.tree_util.tree_map(jnp.asarray, tree))
  assert host == device and all(host_finite.values()) and all(device_finite.values())
  for name, array in tree.items():
    key = f"['{name}']"
    flat = np.array(array).reshape(-1)
    for index in (0, flat.size - 1):  # one bit of one element
      changed = flat.copy()
      bits = changed.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[changed.itemsize])
      bits[index] ^= 1
      again = {**tree, name: changed.reshape(np.shape(array))}
      assert digests.host_tree_digests(again)[0][key] != host[key], (name, index)
      assert digests.tree_digests(jax.tree_util.tree_map(jnp.asarray, again))[0][key] != \
          host[key], (name, index)
  swapped = tree["f32"].copy()
  swapped[0, [0, 1]] = swapped[0, [1, 0]]  # the same values elsewhere: the index counts
  assert digests.host_digest(swapped)[0] != host["['f32']"]
  nan = tree["f32"].copy()
  nan[2, 3] = np.nan
  assert digests.host_digest(nan)[1] is False
  assert digests.tree_digests({"x": jnp.asarray(nan)})[1]["['x']"] is False


def test_digests_do_not_depend_on_sharding():
  code = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from glm_jax import digests
x = np.random.default_rng(1).standard_normal((16, 24)).astype(np.float32)
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
found = {str(spec): digests.tree_digests({"x": jax.device_put(x, NamedSharding(mesh, spec))})[0]
         for spec in (P(), P("a"), P("a", "b"), P(None, ("a", "b")))}
assert len(set(map(str, found.values()))) == 1, found
assert list(found.values())[0] == digests.host_tree_digests({"x": x})[0]
print("same")
"""
  result = run_script(code, env=multi_device_env(8), timeout=180)
  assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


# ------------------------------------------------------------------ corrupt checkpoints


def _data_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
             key=os.path.getsize)


def _flip(path, offset=None):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2 if offset is None else offset] ^= 0x40
  with open(path, "wb") as f:
    f.write(bytes(data))


def _cut(path):
  with open(path, "wb"):
    pass


CORRUPTIONS = {
    "flipped_data_byte": lambda d: _flip(_data_file(d)),
    "cut_data_file": lambda d: _cut(_data_file(d)),
    "lost_data_file": lambda d: os.remove(_data_file(d)),
    "cut_manifest": lambda d: _cut(os.path.join(d, "state", "manifest.ocdbt")),
    "cut_metadata": lambda d: _cut(os.path.join(d, "meta", "metadata")),
}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  root = tmp_path_factory.mktemp("two_steps") / "run"
  manager = _manager(root)
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  return root


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_latest_step_is_set_aside_for_the_previous(two_steps, tmp_path, corruption,
                                                             caplog):
  run = tmp_path / "run"
  shutil.copytree(two_steps, run)
  CORRUPTIONS[corruption](str(run / "4"))
  manager = _manager(run)
  state, meta = manager.restore_latest()
  manager.close()
  assert meta["step"] == 2
  _assert_same(state, _state(2))
  warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
  assert len(warnings) == 1 and "step 4" in warnings[0], warnings
  assert sorted(n.split("_")[0] for n in os.listdir(run)) == ["2", "corrupt"]
  # Evaluation and inference read the same way: the newest intact step.
  shutil.rmtree(run)
  shutil.copytree(two_steps, run)
  CORRUPTIONS[corruption](str(run / "4"))
  params, _, _, step = checkpoints.load_params(str(run))
  assert step == 2
  _assert_same(params, _state(2).params)
  with pytest.raises(ValueError, match="cannot be read"):
    checkpoints.load_params(str(run / "4"))


def test_a_flipped_byte_is_caught_by_the_digests_alone(two_steps, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(two_steps, run)
  _flip(_data_file(str(run / "4")))
  meta = json.load(open(run / "4" / "meta" / "metadata"))
  assert meta[checkpoints.DIGESTS_KEY][".params['word_embeddings']"]
  state = _manager(run)._manager.restore(4, args=checkpoints.ocp.args.Composite(
      state=checkpoints.ocp.args.StandardRestore(_abstract(_state(0)))))["state"]
  # tensorstore reads the flipped bytes without complaint; only the digest tells.
  assert not np.array_equal(np.asarray(state.params["word_embeddings"]),
                            np.asarray(_state(4).params["word_embeddings"]))
  with pytest.raises(checkpoints.CorruptCheckpoint, match="word_embeddings"):
    checkpoints.verify(state, meta[checkpoints.DIGESTS_KEY], "step 4")
  rows = checkpoints.describe(str(run))
  assert [r["status"] for r in rows][0] == "ok" and "digest" in rows[1]["status"]


def test_params_only_checkpoints_are_verified(tmp_path):
  path = checkpoints.save_params_checkpoint(str(tmp_path / "p"), _state(3).params, CFG, "builtin")
  _flip(max(glob.glob(os.path.join(path, "params", "**", "d", "*"), recursive=True),
            key=os.path.getsize))
  with pytest.raises(ValueError, match="digest"):
    checkpoints.load_params(path)


def test_a_non_finite_state_is_never_saved(tmp_path):
  manager = _manager(tmp_path / "run")
  bad = _state(2)
  bad = bad.replace(opt_state={**bad.opt_state, "mu": {**bad.opt_state["mu"], "layers": {
      "wi_bias": jnp.full((1, 64), jnp.inf)}}})
  with pytest.raises(checkpoints.NonFiniteState, match=r"mu.*wi_bias.*not saved"):
    manager.save(bad, next_batch=2, config=CFG, vocab_spec="builtin")
  manager.close()
  assert not [n for n in os.listdir(tmp_path / "run") if n[0].isdigit()]
  params = {**_state(2).params, "word_embeddings": jnp.full((64, 16), jnp.nan)}
  with pytest.raises(checkpoints.NonFiniteState, match="nothing was written"):
    checkpoints.save_params_checkpoint(str(tmp_path / "p"), params, CFG, "builtin")
  assert not os.path.exists(tmp_path / "p")


def test_a_restored_state_with_nan_falls_back(tmp_path):
  """A step saved without digests (an older glm_jax) whose arrays hold NaN is set aside."""
  manager = _manager(tmp_path)
  manager.save(_state(2), next_batch=2, config=CFG, vocab_spec="builtin")
  manager.wait()
  bad = _state(4)
  bad = bad.replace(params={**bad.params, "word_embeddings": jnp.full((64, 16), jnp.nan)})
  meta = {"step": 4, "next_batch": 4, "glm_config": CFG.to_dict(), "vocab_spec": "builtin"}
  ocp = checkpoints.ocp
  manager._manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(bad),
                                                   meta=ocp.args.JsonSave(meta)))
  manager.close()
  reopened = _manager(tmp_path)
  _, meta = reopened.restore_latest()
  reopened.close()
  assert meta["step"] == 2


@pytest.mark.parametrize("keep,expected", [(0, [6]), (1, [6]), (2, [4, 6]), (None, [2, 4, 6])])
def test_keep_checkpoints_always_keeps_the_latest(tmp_path, keep, expected):
  manager = _manager(tmp_path, keep=keep)
  for step in (2, 4, 6):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
    assert manager.all_steps()[-1] == step  # the newest is never the one removed
  manager.close()
  assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == expected
  with pytest.raises(ValueError, match="KEEP_CHECKPOINTS"):
    checkpoints.keep_count(-1)


# ---------------------------------------------------------------------- metrics.jsonl


def _damaged_log(path):
  with open(path, "wb") as f:
    f.write(b'{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n'
            b'\xff\xfe stray bytes\n[1, 2]\n{"loss": 9.0}\n{"step": 3, "loss": 1.5}\n'
            b'{"step": 4, "lo')


def test_a_damaged_metrics_log_never_blocks_a_resume(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  _damaged_log(path)
  read = metrics_writer.read_records(path)
  assert [n for n, _ in read.bad] == [3, 4, 5, 7] and read.cut_line == 7
  metrics_writer.truncate_after(path, 2)
  assert path.read_text() == '{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n'
  warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(warnings) == 1 and "dropped 4 damaged line(s)" in warnings[0]
  writer = metrics_writer.MetricsWriter(str(tmp_path), resume_step=2)
  writer.write(3, {"loss": 1.0})
  writer.close()
  assert [r["step"] for _, r, _ in metrics_writer.read_records(path).records] == [1, 2, 3]


def test_plot_names_the_file_and_line_it_cannot_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _damaged_log(path)
  with pytest.raises(ValueError, match=r"metrics.jsonl line 3 is not UTF-8 text \(and 2 more"):
    plot.read_curves(str(path))
  path.write_bytes(b'{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
  assert plot.read_curves(str(path))["loss"] == [(1, 2.5), (2, 2.0)]  # a trainer writing
  path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
  with pytest.raises(ValueError, match="line 1 is not UTF-8 text"):
    plot.read_curves(str(path))


# ------------------------------------------------------------------------------- lock


@pytest.fixture(params=["local", "gcs"])
def lock_dir(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "run")
  return request.getfixturevalue("gcs").url("locks", uuid.uuid4().hex)


def _write_lock(directory, record):
  lock = run_lock.RunLock(directory)
  lock._kv().write(run_lock.LOCK_FILE, json.dumps(record).encode()).result()  # pylint: disable=protected-access


def _read_lock(directory):
  return run_lock.RunLock(directory)._read()[0]  # pylint: disable=protected-access


def test_a_second_trainer_is_refused_and_told_the_holder(lock_dir):
  first = run_lock.RunLock(lock_dir, heartbeat_seconds=0.2).acquire()
  started = _read_lock(lock_dir)["heartbeat"]
  with pytest.raises(run_lock.LockHeld, match=rf"in use by another trainer: host "
                     rf"{socket.gethostname()} pid {os.getpid()}"):
    run_lock.RunLock(lock_dir).acquire()
  deadline = time.time() + 20
  while _read_lock(lock_dir)["heartbeat"] == started and time.time() < deadline:
    time.sleep(0.1)
  assert _read_lock(lock_dir)["heartbeat"] > started  # the holder's heartbeat
  first.release()
  assert _read_lock(lock_dir) is None
  run_lock.RunLock(lock_dir).acquire().release()


def test_a_lock_taken_away_is_noticed_and_not_deleted(lock_dir):
  lock = run_lock.RunLock(lock_dir, heartbeat_seconds=0.2).acquire()
  _write_lock(lock_dir, {"host": "other", "pid": 7, "started": time.time(),
                         "heartbeat": time.time()})
  deadline = time.time() + 20
  while lock.lost is None and time.time() < deadline:
    time.sleep(0.1)
  assert lock.lost and "host other pid 7" in lock.lost
  lock.release()
  assert _read_lock(lock_dir)["host"] == "other"


def test_stale_locks_are_taken_over(lock_dir, caplog):
  now = time.time()
  _write_lock(lock_dir, {"host": "elsewhere", "pid": 1, "started": now - 900,
                         "heartbeat": now - 600})
  run_lock.RunLock(lock_dir).acquire().release()
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()  # a process of this machine that has ended
  same_machine = {"host": socket.gethostname(), "pid_namespace": os.readlink("/proc/self/ns/pid"),
                  "started": now, "heartbeat": now}
  _write_lock(lock_dir, {**same_machine, "pid": child.pid})
  run_lock.RunLock(lock_dir).acquire().release()
  assert sum("Took over the stale lock" in r.getMessage() for r in caplog.records) == 2
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(lock_dir, {**same_machine, "pid": sleeper.pid})
    with pytest.raises(run_lock.LockHeld, match=f"pid {sleeper.pid}"):
      run_lock.RunLock(lock_dir).acquire()
  finally:
    sleeper.kill()  # our own child
    sleeper.wait()


def test_racing_trainers_get_exactly_one_lock(lock_dir):
  results, barrier = [], threading.Barrier(4)

  def contend():
    lock = run_lock.RunLock(lock_dir)
    barrier.wait()
    try:
      results.append(lock.acquire())
    except run_lock.LockHeld:
      results.append(None)

  threads = [threading.Thread(target=contend) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  winners = [r for r in results if r is not None]
  assert len(results) == 4 and len(winners) == 1
  winners[0].release()


# ------------------------------------------------------------------------- end to end


def _train(gin_file, model_dir, *extra, env=None, timeout=240):
  return run_module("glm_jax.train", [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}",
                                      *extra], env=env, timeout=timeout)


def _error_line(result):
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def _listing(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = open(path, "rb").read()
  return out


@pytest.mark.slow
def test_resume_survives_a_corrupt_step_and_a_damaged_log(tmp_path):
  """Corrupt latest step and damaged metrics tail: resume from the step before, bitwise; a
  MODEL_DIR of another model is refused untouched; KEEP_CHECKPOINTS=0 keeps the latest."""
  gin_file = write_tiny_gin(tmp_path, "TRAIN_STEPS = 8\nKEEP_CHECKPOINTS = 2\n")
  run = tmp_path / "run"
  result = _train(gin_file, run)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(n for n in os.listdir(run) if n.isdigit()) == ["4", "8"]
  final = checkpoints.describe(str(run))[-1]["sha256"]
  _flip(_data_file(str(run / "8")))
  with open(run / "metrics.jsonl", "ab") as f:
    f.write(b'\xff\x00garbage\n[3]\n{"step": 9, "lo')
  result = _train(gin_file, run)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed from step 4" in result.stdout
  warned = [l for l in result.stderr.splitlines() if "set aside" in l]
  assert len(warned) == 1 and "step 8" in warned[0] and "digest" in warned[0]
  assert sum("damaged line" in l for l in result.stderr.splitlines()) == 1
  assert checkpoints.describe(str(run))[-1]["sha256"] == final  # steps 5..8 again, bitwise
  steps = [r["step"] for _, r, _ in metrics_writer.read_records(run / "metrics.jsonl").records]
  assert steps == list(range(1, 9)) and not metrics_writer.read_records(
      run / "metrics.jsonl").bad

  before = _listing(run)
  for bindings, named in (
      (["--gin.model.GLMConfig.hidden_size=64"],
       "holds a run of another model (step 8: hidden_size 32 (saved) vs 64)"),
      (["--gin.VOCABULARY='builtin'", "--gin.model.GLMConfig.vocab_size=8064"],
       "was trained with vocabulary 'synthetic' but VOCABULARY is 'builtin'")):
    result = _train(gin_file, run, *bindings)
    assert result.returncode == 2
    line = _error_line(result)
    assert f"MODEL_DIR {run}" in line and named in line, line
  assert _listing(run) == before  # untouched: no rename, no lock, no log rewritten

  result = _train(gin_file, run, "--gin.TRAIN_STEPS=12", "--gin.KEEP_CHECKPOINTS=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(n for n in os.listdir(run) if n.isdigit()) == ["12"]


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(proc.stderr.read()[-3000:])
    time.sleep(0.05)
  raise AssertionError("timed out")


@pytest.mark.slow
def test_one_trainer_per_model_dir_and_a_killed_trainers_lock_is_taken_over(tmp_path):
  gin_file = write_tiny_gin(tmp_path, "TRAIN_STEPS = 100000\nCHECKPOINT_PERIOD = 3\n")
  run = tmp_path / "run"
  first = subprocess.Popen([sys.executable, "-m", "glm_jax.train", f"--gin_file={gin_file}",
                            f"--gin.MODEL_DIR={run}"], cwd=REPO_ROOT, env=multi_device_env(1),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, first)
    start = time.time()
    second = _train(gin_file, run)
    assert second.returncode == 2 and time.time() - start < 60
    line = _error_line(second)
    assert f"in use by another trainer: host {socket.gethostname()} pid {first.pid}" in line
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert (run / run_lock.LOCK_FILE).exists()  # a dead trainer's lock stays behind
  last = max(int(n) for n in os.listdir(run) if n.isdigit())
  third = _train(gin_file, run, f"--gin.TRAIN_STEPS={last + 3}")
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Took over the stale lock" in third.stderr and f"Resumed from step {last}" in third.stdout
  assert not (run / run_lock.LOCK_FILE).exists()
  steps = [r["step"] for _, r, _ in metrics_writer.read_records(run / "metrics.jsonl").records]
  assert steps == list(range(1, last + 4))  # every line once


def _unshare_works() -> bool:
  try:
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare (user + mount namespaces) to "
                    "mount a small tmpfs")
def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
  """MODEL_DIR on a 600 KiB tmpfs: step 4 fits, step 8 does not. Then more space, resume."""
  gin_file = write_tiny_gin(tmp_path, "TRAIN_STEPS = 12\nKEEP_CHECKPOINTS = 1\n")
  mount, out = tmp_path / "disk", tmp_path / "out"
  mount.mkdir()
  out.mkdir()
  train = (f"{sys.executable} -m glm_jax.train --gin_file={gin_file} "
           f"--gin.MODEL_DIR={mount}/run")
  script = f"""
set -u
mount -t tmpfs -o size=600k tmpfs {mount}
{train} > {out}/full.out 2> {out}/full.err; echo $? > {out}/full.rc
{sys.executable} -m glm_jax.checkpoints --model_dir={mount}/run > {out}/kept.out 2>&1
mount -o remount,size=8m {mount}
{train} > {out}/resume.out 2> {out}/resume.err; echo $? > {out}/resume.rc
ls {mount}/run > {out}/listing
"""
  subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                 cwd=REPO_ROOT, env=multi_device_env(1), timeout=600, check=True)
  read = lambda name: (out / name).read_text()  # pylint: disable=unnecessary-lambda-assignment
  assert read("full.rc").strip() == "1", read("full.err")[-3000:]
  err = read("full.err")
  assert "Traceback" not in err, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, err[-3000:]
  line = errors[0]
  assert "Saving checkpoint step 8" in line and "No space left on device" in line
  assert "the last complete checkpoint is step 4" in line
  kept = read("kept.out")
  assert [l.split()[0] for l in kept.splitlines() if l.strip()[:1].isdigit()] == ["4"]
  assert kept.strip().splitlines()[-1].endswith("ok")
  assert read("resume.rc").strip() == "0", read("resume.err")[-3000:]
  assert "Resumed from step 4" in read("resume.out")
  assert read("listing").split() == ["12", "config.gin", "metrics.jsonl", "operative_config.gin",
                                     "tensorboard"]


@pytest.mark.slow
def test_an_update_that_overflows_is_never_saved(tmp_path):
  """Finite loss and gradients, but the update takes the parameters past float32's range."""
  gin_file = write_tiny_gin(tmp_path, "LEARNING_RATE = 3.4e38\nWARMUP_STEPS = 0\n"
                            "CHECKPOINT_PERIOD = 1\nTRAIN_STEPS = 3\nSCHEDULE = 'constant'\n")
  run = tmp_path / "run"
  result = _train(gin_file, run)
  assert result.returncode == 1
  line = _error_line(result)
  assert "holds NaN or Inf" in line and "not saved" in line and "step 1" in line, line
  assert not [n for n in os.listdir(run) if n.isdigit()]
