"""The quiet start of the command-line tools: TensorFlow's start-up lines hidden, others kept."""

import os

from glm_jax import console

from conftest import multi_device_env, run_script

TF_STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796152384.062991   25309 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results.",
    "I0000 00:00:1796152384.068021   25309 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796152386.823740   25309 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
)


def test_noise_patterns():
  assert all(console.is_noise(line) for line in TF_STARTUP)
  assert not console.is_noise("E0000 dataset_ops.cc:42] Could not open /data/train.txt")
  assert not console.is_noise("UserWarning: MODEL_DIR is not empty")


def test_filtered_stderr_drops_startup_lines_and_keeps_the_rest(capfd):
  with console.filtered_stderr():
    for line in TF_STARTUP:
      os.write(2, (line + "\n").encode())  # as C++ logging writes, below Python
    os.write(2, b"E0000 real_error.cc:1] something about the run\n")
    os.write(2, b"UserWarning: a warning about the run\n")
  err = capfd.readouterr().err
  assert err == ("E0000 real_error.cc:1] something about the run\n"
                 "UserWarning: a warning about the run\n")


def test_tensorflow_imports_quietly_and_without_gpus():
  code = ("from glm_jax import console\n"
          "console.quiet_startup()\n"
          "import tensorflow as tf\n"
          "print('visible GPUs:', tf.config.get_visible_devices('GPU'))\n")
  env = multi_device_env(1)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  result = run_script(code, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "visible GPUs: []" in result.stdout
  assert result.stderr.strip() == "", result.stderr[-2000:]
  # Without the quiet start the same import prints TensorFlow's start-up lines.
  loud = run_script("import tensorflow", env=env)
  assert any(console.is_noise(line) for line in loud.stderr.splitlines())
