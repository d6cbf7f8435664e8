"""jal.bench.profiling: HLO parsing and op classification on hand-written HLO, and a
real jax.profiler trace of a vmapped convolution on the CPU."""

import collections

import jax
import jax.numpy as jnp
import pytest

from jal.bench import cases
from jal.bench import profiling

# The shapes of what XLA prints (compiled.as_text()): a GPU module with cuDNN
# custom-calls, a cuBLAS gemm, a fusion wrapping a grouped convolution, a
# layout-only fusion and a while loop.
HLO = """HloModule jit_fit, entry_computation_layout={(f32[5,3,3,3,64]{4,3,2,1,0})->f32[]}

%fused_conv (param_0: bf16[640,32,32,3], param_1: bf16[3,3,3,320]) -> bf16[640,32,32,320] {
  %param_0 = bf16[640,32,32,3]{3,2,1,0} parameter(0)
  %param_1 = bf16[3,3,3,320]{3,2,1,0} parameter(1)
  ROOT %convolution.7 = bf16[640,32,32,320]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, feature_group_count=5
}

%fused_move (param_0.1: f32[5,64]) -> f32[64,5] {
  %param_0.1 = f32[5,64]{1,0} parameter(0)
  ROOT %transpose.3 = f32[64,5]{1,0} transpose(%param_0.1), dimensions={1,0}
}

%body (p: (s32[], f32[5,64])) -> (s32[], f32[5,64]) {
  %p = (s32[], f32[5,64]{1,0}) parameter(0)
  %custom-call.12 = (bf16[128,32,32,64]{3,2,1,0}, u8[0]{0}) custom-call(bf16[128,32,32,64]{3,2,1,0} %a, bf16[3,3,64,64]{3,2,1,0} %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %custom-call.13 = (bf16[3,3,64,320]{3,2,1,0}, u8[0]{0}) custom-call(bf16[128,32,32,320]{3,2,1,0} %c, bf16[128,32,32,320]{3,2,1,0} %d), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, feature_group_count=5, custom_call_target="__cudnn$convBackwardFilter"
  %custom-call.14 = (f32[128,10]{1,0}, s8[4]{0}) custom-call(f32[128,512]{1,0} %e, f32[512,10]{1,0} %f), custom_call_target="__cublas$gemm"
  %loop_fusion.2 = bf16[640,32,32,320]{3,2,1,0} fusion(bf16[640,32,32,3]{3,2,1,0} %g, bf16[3,3,3,320]{3,2,1,0} %h), kind=kCustom, calls=%fused_conv
  %move_fusion = f32[64,5]{1,0} fusion(f32[5,64]{1,0} %i), kind=kLoop, calls=%fused_move
  %all-reduce.1 = f32[64]{0} all-reduce(f32[64]{0} %j), replica_groups={}, to_apply=%add
  ROOT %tuple.4 = (s32[], f32[5,64]{1,0}) tuple(%k, %l)
}

ENTRY %main.9 (Arg_0.1: f32[5,3,3,3,64]) -> f32[] {
  %Arg_0.1 = f32[5,3,3,3,64]{4,3,2,1,0} parameter(0)
  %while.5 = (s32[], f32[5,64]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %reduce.2 = f32[] reduce(%m, %n), dimensions={0,1}, to_apply=%add
}
"""


@pytest.fixture(scope='module')
def instrs():
  return profiling.parse_hlo(HLO)


def test_parse_hlo_reads_opcodes_and_attributes(instrs):
  ins = instrs['custom-call.13']
  assert (ins.opcode, ins.target, ins.groups, ins.dim_labels, ins.computation) == (
      'custom-call',
      '__cudnn$convBackwardFilter',
      5,
      'b01f_o01i->b01f',
      'body',
  )
  assert instrs['custom-call.12'].groups == 1
  assert instrs['convolution.7'].computation == 'fused_conv'
  assert (
      instrs['loop_fusion.2'].opcode,
      instrs['loop_fusion.2'].calls,
      instrs['loop_fusion.2'].kind,
  ) == ('fusion', 'fused_conv', 'kCustom')
  assert instrs['while.5'].computation == 'main.9'
  assert instrs['tuple.4'].opcode == 'tuple'  # a tuple type does not fool it
  assert instrs['param_0'].opcode == 'parameter'
  assert 'HloModule' not in instrs and 'fused_conv' not in instrs


def test_classify(instrs):
  cls = lambda name: profiling.classify(name, instrs)
  assert cls('custom-call.12') == {
      'category': 'convolution',
      'opcode': 'custom-call',
      'target': '__cudnn$convForward',
      'dim_labels': 'b01f_o01i->b01f',
  }
  assert cls('custom-call.13')['category'] == 'convolution (grouped)'
  assert cls('custom-call.13')['groups'] == 5
  assert cls('custom-call.14')['category'] == 'matmul'
  fused = cls('loop_fusion.2')
  assert (fused['category'], fused['groups'], fused['wraps'], fused['kind']) == (
      'convolution (grouped)',
      5,
      'convolution convolution.7',
      'kCustom',
  )
  assert cls('move_fusion')['category'] == 'copy/transpose'
  assert cls('all-reduce.1')['category'] == 'collective'
  assert cls('reduce.2')['category'] == 'other'
  # Ops of programs without HLO text: from the name, or unknown.
  assert cls('convolution.3') == {'category': 'convolution', 'from_name': True}
  assert cls('multiply_add_fusion.8') == {'category': 'fusion', 'from_name': True}
  assert cls('xyz.1') == {'category': 'unknown'}


def test_summarise_sums_by_category_and_leaves_loops_out(instrs):
  times = collections.Counter(
      {
          ('jit_fit', 'while.5'): 10.0,  # encloses the ops below: left out
          ('jit_fit', 'custom-call.13'): 3.0,
          ('jit_fit', 'loop_fusion.2'): 1.0,
          ('jit_fit', 'custom-call.12'): 2.0,
          ('jit_fit', 'custom-call.14'): 1.5,
          ('jit_fit', 'move_fusion'): 0.5,
          ('other', 'cond.3'): 4.0,
      }
  )
  rec = profiling.summarise(times, instrs, top=2)
  assert rec['op_seconds'] == 8.0 and rec['ops'] == 5
  assert rec['control_flow_ops_left_out'] == 2
  assert rec['by_category_seconds'] == {
      'convolution (grouped)': 4.0,
      'convolution': 2.0,
      'matmul': 1.5,
      'copy/transpose': 0.5,
  }
  assert rec['by_category_fraction']['convolution (grouped)'] == 0.5
  assert [(r['op'], r['seconds'], r['fraction']) for r in rec['top_ops']] == [
      ('custom-call.13', 3.0, 0.375),
      ('custom-call.12', 2.0, 0.25),
  ]
  assert (rec['hlo_convolutions'], rec['hlo_grouped_convolutions']) == (3, 2)
  assert rec['hlo_convolution_layouts'] == {'b01f_o01i->b01f': 2, 'b01f_01io->b01f': 1}


def _conv_grad(vmapped: bool):
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  grad = jax.grad(lambda w, x: jnp.sum(jax.nn.relu(conv(x, w)) ** 2))
  if vmapped:
    return jax.jit(jax.vmap(grad)), jnp.ones((3, 3, 3, 4, 8)), jnp.ones((3, 8, 16, 16, 4))
  return jax.jit(grad), jnp.ones((3, 3, 4, 8)), jnp.ones((8, 16, 16, 4))


@pytest.mark.parametrize('vmapped', [False, True])
def test_profile_of_a_real_trace_finds_the_grouped_convolutions(tmp_path, vmapped):
  fn, w, x = _conv_grad(vmapped)
  compiled = fn.lower(w, x).compile()
  compiled(w, x).block_until_ready()
  rec = profiling.profile(lambda: compiled(w, x), str(tmp_path), [compiled.as_text()])
  assert rec['trace'].startswith(str(tmp_path)) and rec['trace'].endswith('.xplane.pb')
  assert rec['trace_source'] == 'host thread events (XLA:CPU thunks)'
  # The forward convolution and the weight gradient's: grouped (3 members)
  # exactly when vmapped.
  assert rec['hlo_convolutions'] == 2
  assert rec['hlo_grouped_convolutions'] == (2 if vmapped else 0)
  conv_cat = 'convolution (grouped)' if vmapped else 'convolution'
  assert set(rec['by_category_seconds']) >= {conv_cat}
  assert 'unknown' not in rec['by_category_seconds']
  assert rec['op_seconds'] > 0 and rec['traced_call_seconds'] > 0
  assert rec['op_seconds_over_call_seconds'] == pytest.approx(
      rec['op_seconds'] / rec['traced_call_seconds']
  )
  assert sum(rec['by_category_fraction'].values()) == pytest.approx(1.0)
  convs = [r for r in rec['top_ops'] if r['category'] == conv_cat]
  assert len(convs) == 2 and all(r.get('groups', 1) == (3 if vmapped else 1) for r in convs)


def test_missing_trace_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no \\*.xplane.pb under'):
    profiling.latest_trace(str(tmp_path))


def test_bench_profile_dir_adds_a_profile_record_per_timed_program(tmp_path):
  recs = cases.run(('k_center',), size='small', profile_dir=str(tmp_path))
  timing, prof = recs
  assert timing['case'] == prof['case'] == 'k_center' and 'mode' not in timing
  assert prof['mode'] == 'profile' and prof['label'] == 'k_center_2000x64'
  assert (prof['n'], prof['d'], prof['k']) == (2000, 64, 50)
  assert prof['trace'].startswith(str(tmp_path / 'k_center_2000x64'))
  # One jitted loop: the per-pick matrix-vector products are there, and the
  # loop itself is left out rather than counted twice.
  assert prof['by_category_seconds']['matmul'] > 0
  assert prof['control_flow_ops_left_out'] >= 1
  assert prof['hlo_convolutions'] == 0
