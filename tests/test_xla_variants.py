"""launch.xla_variants: variant tables, the side-by-side summary, and one real run."""

import json
import subprocess
import sys

import pytest

from launch import xla_variants
from tests.conftest import REPO


def test_parse_variants_picks_and_adds():
  assert xla_variants.parse_variants(['default', 'nhwc']) == {
      'default': '',
      'nhwc': '--xla_gpu_force_conv_nhwc=true',
  }
  assert xla_variants.parse_variants(['default'], ['fast:--xla_a=1 --xla_b=2']) == {
      'default': '',
      'fast': '--xla_a=1 --xla_b=2',
  }
  with pytest.raises(ValueError, match="unknown variant\\(s\\) \\['nhwd'\\]; valid: default, nhwc"):
    xla_variants.parse_variants(['nhwd'])
  with pytest.raises(ValueError, match='expected name:FLAGS'):
    xla_variants.parse_variants([], ['no-colon'])


def test_summary_puts_variants_side_by_side():
  timing = {'case': 'ensemble_train', 'model': 'resnet18', 'mode': 'vmap', 'members': 5}
  profile = {
      'case': 'ensemble_train',
      'model': 'resnet18',
      'mode': 'profile',
      'profiled_mode': 'vmap',
      'members': 5,
      'op_seconds_over_call_seconds': 0.9,
      'by_category_fraction': {
          'fusion': 0.1,
          'convolution (grouped)': 0.7,
          'matmul': 0.05,
          'copy/transpose': 0.15,
      },
  }
  rows = xla_variants.summarise(
      {
          'default': [{**timing, 'images_per_second': 30000.0, 'seconds': 1.3}, profile],
          'nhwc': [{**timing, 'images_per_second': 45000.0, 'seconds': 0.9}],
      }
  )
  assert rows == [
      {
          'program': 'case=ensemble_train model=resnet18 members=5 mode=vmap',
          'images_per_second': {'default': 30000.0, 'nhwc': 45000.0},
          'seconds': {'default': 1.3, 'nhwc': 0.9},
          'op_time': {
              'default': {
                  'categories': {
                      'convolution (grouped)': 0.7,
                      'copy/transpose': 0.15,
                      'fusion': 0.1,
                  },
                  'op_seconds_over_call_seconds': 0.9,
              }
          },
      }
  ]


def test_cli_runs_each_variant_in_its_own_process(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'launch.xla_variants',
          f'--out={tmp_path}',
          '--variants=no_autotune',
          '--',
          '--cases=k_center',
          '--size=small',
          '--repeats=1',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
  )
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r['program'] for r in rows] == ['case=k_center n=2000 d=64 k=50']
  assert rows[0]['seconds']['no_autotune'] > 0
  (rec,) = [json.loads(line) for line in (tmp_path / 'no_autotune.jsonl').read_text().splitlines()]
  assert rec['case'] == 'k_center' and rec['k'] == 50


def test_cli_refuses_an_unknown_variant_before_running(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.xla_variants', f'--out={tmp_path}', '--variants=bogus'],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
  )
  assert proc.returncode != 0
  assert (
      proc.stderr.strip()
      .splitlines()[-1]
      .startswith("error: unknown variant(s) ['bogus']; valid: default, nhwc")
  )
  assert not list(tmp_path.glob('*.jsonl'))
