"""Runs launch/adversary.py: every probe of the hardening issue must hold."""

import subprocess
import sys

from launch import adversary


def test_error_lines_counts_absl_errors_and_error_prefix():
  stderr = (
      'I1206 14:47:47.7 1 main.py:42] starting\n'
      'E1206 14:47:47.7 1 main.py:42] boom\n'
      'error: boom\n'
      'W1206 14:47:47.7 1 x.py:1] a warning\n'
  )
  assert adversary.error_lines(stderr) == ['E1206 14:47:47.7 1 main.py:42] boom', 'error: boom']


def test_every_probe_holds(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.adversary', f'--root={tmp_path}'],
      cwd=adversary.REPO,
      capture_output=True,
      text=True,
      check=False,
      timeout=1500,
  )
  lines = proc.stdout.splitlines()
  verdicts = {l.split()[1]: l.split()[0] for l in lines if l.split()[:1] in (['PASS'], ['FAIL'])}
  assert verdicts == {name: 'PASS' for name in adversary.PROBES}, proc.stdout + proc.stderr[-2000:]
  assert proc.returncode == 0
