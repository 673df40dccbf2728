"""The shipped reference subsets (tests/fixtures): faithful to the full sets, documented, and
the guard that makes a skipped parity test fail."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO_ROOT, SHIPPED_FIXTURES, load_tool, shared_fixture
import reference_cases as ref

_NO_SHARED = pytest.mark.skipif(shared_fixture(ref.SET) is None,
                                reason="optional: ../shared/fixtures/glm_reference not present")


def _tool():
  return load_tool("make_parity_fixtures")


def _assert_same_arrays(got: dict, expected: dict) -> None:
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _documented(relative: str, readme: str) -> bool:
  """The file's name, a folder above it (`megatron_mp2/`) or a `<task>.inputs.jsonl` pattern."""
  parts = relative.split(os.sep)
  if parts[-1] in readme or any(f"{d}/" in readme for d in parts[1:-1]):
    return True
  patterns = re.findall(r"`([^`]*<[a-z_]+>[^`]*)`", readme)
  return any(re.fullmatch(re.sub(r"<[a-z_]+>", "[A-Za-z0-9_]+", re.escape(p)), parts[-1])
             for p in patterns)


def test_every_shipped_file_is_documented():
  with open(os.path.join(SHIPPED_FIXTURES, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  for root, _, files in os.walk(SHIPPED_FIXTURES):
    for name in files:
      relative = os.path.relpath(os.path.join(root, name), SHIPPED_FIXTURES)
      if name != "README.md":
        assert _documented(relative, readme), (
            f"{relative} is not described in tests/fixtures/README.md")


def test_compact_cases_keep_inputs_and_cut_logits():
  tool = _tool()
  columns = tool.logit_columns()
  assert len(columns) == 64 and set(tool.SPECIAL_IDS) <= set(columns.tolist())
  cases, kept = ref.cases()
  np.testing.assert_array_equal(kept, columns)
  assert cases["blank_infill/logits"].shape == (3, 46, 64)
  assert cases["blank_infill/input_ids"].shape == (3, 46)
  assert not any(k.endswith(("/layer_hiddens", "/final_hidden")) for k in cases)


@pytest.mark.full_fixtures
@_NO_SHARED
@pytest.mark.parametrize("suffix", ["", "_stress"])
def test_shipped_cases_are_the_shared_cases_cut(suffix):
  full = ref.load_npz(os.path.join(shared_fixture(ref.SET), f"cases_glm_tiny_a{suffix}.npz"))
  shipped, columns = ref.cases(stress=bool(suffix))
  _assert_same_arrays(shipped, _tool().compact_cases(full, columns))


@pytest.mark.full_fixtures
@_NO_SHARED
def test_shipped_model_and_derived_stress_model_equal_the_shared_files():
  with open(os.path.join(shared_fixture(ref.SET), ref.MODEL), "rb") as f:
    shared_bytes = f.read()
  with open(os.path.join(SHIPPED_FIXTURES, ref.SET, ref.MODEL), "rb") as f:
    assert f.read() == shared_bytes
  stress = ref.load_npz(os.path.join(shared_fixture(ref.SET), "model_glm_tiny_a_stress.npz"))
  _assert_same_arrays(ref.state_dict(stress=True), stress)


@pytest.mark.full_fixtures
@_NO_SHARED
def test_shipped_collator_inputs_are_the_first_of_the_shared_ones():
  shipped = ref.load_npz(os.path.join(SHIPPED_FIXTURES, ref.SET,
                                      "collator_inputs_glm_tiny_a_300.npz"))
  full = ref.load_npz(os.path.join(shared_fixture(ref.SET), "collator_inputs_glm_tiny_a.npz"))
  for key in ("text", "multi_doc"):
    np.testing.assert_array_equal(shipped[key], full[key][:300])


def test_a_skipped_parity_test_fails_the_run(tmp_path):
  (tmp_path / "test_fake.py").write_text(textwrap.dedent("""\
      import pytest

      @pytest.mark.parity
      def test_needs_fixture():
        pytest.skip("fixture missing")

      @pytest.mark.parity
      @pytest.mark.full_fixtures
      @pytest.mark.skipif(True, reason="optional full set absent")
      def test_optional_extra():
        pass

      def test_ordinary_skip():
        pytest.skip("not relevant here")

      @pytest.mark.parity
      def test_runs():
        assert True
      """))
  env = dict(os.environ, PYTHONPATH=os.path.join(REPO_ROOT, "tests"))
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "parity_guard", "-p",
       "no:cacheprovider", "test_fake.py"], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 1, result.stdout
  assert "1 failed, 1 passed, 2 skipped" in result.stdout, result.stdout
  assert "Parity test skipped (fixture missing)" in result.stdout
  assert "optional full set absent" in result.stdout  # -rs prints the reasons
