"""Where a compiled program spends its time: a jax.profiler trace, summarised.

`profile(fn, directory, hlo_texts)` runs `fn` once under `jax.profiler.trace`,
reads the trace back with `jax.profiler.ProfileData`, sums the time of every
XLA op (GPU kernels on the device's streams; on a CPU, the thunks XLA runs on
the host's threads) and classifies each op from the optimised HLO of the
programs it came from: convolution (and whether it is *grouped*, the form
`jax.vmap` gives a convolution over a member axis, jax-ml/jax#13800), matmul,
other fusions, copies and transposes, collectives. The result is one JSON-able
record; the trace stays in `directory` for TensorBoard or Perfetto.

    record = profile(lambda: compiled(*args), '/tmp/trace', [compiled.as_text()])
    record['by_category_fraction']   # {'convolution (grouped)': 0.61, ...}
    record['top_ops'][0]             # the op that took longest, with its HLO facts
"""

import collections
import dataclasses
import glob
import os
import re
import time
from typing import Any, Callable, Iterable

import jax

TOP_OPS = 15

_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$')
_OPCODE = re.compile(r'(?<![\w.\-])([a-z][a-z0-9\-]*)\(')
_ATTRS = {
    'feature_group_count': re.compile(r'feature_group_count=(\d+)'),
    'batch_group_count': re.compile(r'batch_group_count=(\d+)'),
    'target': re.compile(r'custom_call_target="([^"]+)"'),
    'dim_labels': re.compile(r'dim_labels=([\w\->]+)'),
    'calls': re.compile(r'calls=%?([\w.\-]+)'),
    'kind': re.compile(r'kind=(k\w+)'),
}
_CONTROL = ('while', 'conditional', 'call', 'async-start', 'async-done')
_CONTROL_NAME = re.compile(r'^(while|cond|conditional|call)(\.\d+)?$')
_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One instruction of an optimised HLO module, as far as profiling needs it."""

  name: str
  opcode: str
  computation: str
  target: str = ''
  calls: str = ''
  kind: str = ''
  dim_labels: str = ''
  groups: int = 1  # max(feature_group_count, batch_group_count)


def parse_hlo(text: str) -> dict[str, Instruction]:
  """{instruction name: Instruction} of an HLO module's text (`compiled.as_text()`).

  Instruction names are unique within a module; computations (fusions, loop
  bodies) are recorded so that a fusion can be classified by what it calls.
  """
  out, computation = {}, ''
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and '=' not in line.split('(')[0]:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.search(rest)
    if op is None:
      continue
    attrs = {k: (p.search(rest).group(1) if p.search(rest) else '') for k, p in _ATTRS.items()}
    groups = max(int(attrs['feature_group_count'] or 1), int(attrs['batch_group_count'] or 1))
    out[name] = Instruction(
        name,
        op.group(1),
        computation,
        attrs['target'],
        attrs['calls'],
        attrs['kind'],
        attrs['dim_labels'],
        groups,
    )
  return out


def _computation_members(instrs: dict[str, Instruction]) -> dict[str, list[Instruction]]:
  by_comp = collections.defaultdict(list)
  for ins in instrs.values():
    by_comp[ins.computation].append(ins)
  return by_comp


def _heavy_op(ins: Instruction, by_comp, depth: int = 0) -> Instruction:
  """The convolution or matmul a fusion wraps (searched through nested
  fusions), else the instruction itself."""
  if ins.opcode != 'fusion' or depth > 4:
    return ins
  found = ins
  for inner in by_comp.get(ins.calls, ()):
    inner = _heavy_op(inner, by_comp, depth + 1)
    if _base_category(inner) in ('convolution', 'matmul'):
      if _base_category(found) != 'convolution':
        found = inner
  return found


def _base_category(ins: Instruction) -> str:
  t = ins.target.lower()
  if ins.opcode == 'convolution' or 'conv' in t:
    return 'convolution'
  if ins.opcode == 'dot' or 'gemm' in t or 'matmul' in t:
    return 'matmul'
  if ins.opcode in _COLLECTIVES or any(ins.opcode.startswith(c) for c in _COLLECTIVES):
    return 'collective'
  if ins.opcode in ('copy', 'transpose', 'copy-start', 'copy-done'):
    return 'copy/transpose'
  if ins.opcode == 'fusion':
    return 'fusion'
  return 'other'


_MOVES = ('parameter', 'copy', 'transpose', 'bitcast', 'reshape', 'tuple', 'get-tuple-element')
_NAME_HINTS = (
    ('conv', 'convolution'),
    ('gemm', 'matmul'),
    ('dot', 'matmul'),
    ('matmul', 'matmul'),
    ('transpose', 'copy/transpose'),
    ('copy', 'copy/transpose'),
    ('all-reduce', 'collective'),
    ('all-gather', 'collective'),
    ('fusion', 'fusion'),
)


def _name_hint(name: str) -> dict[str, Any]:
  """A category guessed from an op's name, for ops of programs without HLO text."""
  for hint, cat in _NAME_HINTS:
    if hint in name.lower():
      return {'category': cat, 'from_name': True}
  return {'category': 'unknown'}


def classify(
    name: str, instrs: dict[str, Instruction], by_comp: dict[str, list[Instruction]] | None = None
) -> dict[str, Any]:
  """What op `name` is: its category and HLO facts.

  Categories: 'convolution', 'convolution (grouped)' (feature or batch group
  count > 1), 'matmul', 'fusion' (elementwise and reductions),
  'copy/transpose' (also fusions of layout moves only), 'collective', 'other'.
  An op missing from `instrs` is classified by its name ('from_name') or
  'unknown'.
  """
  ins = instrs.get(name)
  if ins is None:
    return _name_hint(name)
  by_comp = _computation_members(instrs) if by_comp is None else by_comp
  heavy = _heavy_op(ins, by_comp) if ins.opcode == 'fusion' else ins
  cat = _base_category(heavy)
  if cat == 'fusion' and all(i.opcode in _MOVES for i in by_comp.get(ins.calls, [ins])):
    cat = 'copy/transpose'
  if cat == 'convolution' and heavy.groups > 1:
    cat = 'convolution (grouped)'
  facts = {'category': cat, 'opcode': ins.opcode}
  for field in ('target', 'kind', 'dim_labels'):
    value = getattr(heavy, field) or getattr(ins, field)
    if value:
      facts[field] = value
  if heavy.groups > 1:
    facts['groups'] = heavy.groups
  if heavy is not ins:
    facts['wraps'] = f'{heavy.opcode} {heavy.name}'
  return facts


def _event_seconds(lines: Iterable[Any]) -> collections.Counter:
  times = collections.Counter()
  for line in lines:
    for ev in line.events:
      stats = dict(ev.stats)
      op = stats.get('hlo_op')
      if op:
        times[(str(stats.get('hlo_module', '')), str(op))] += ev.duration_ns * 1e-9
  return times


def op_seconds(xplane_path: str) -> tuple[collections.Counter, str]:
  """({(hlo module, op name): seconds}, where they were read) from a trace file.

  On an accelerator: the kernels on the device planes' stream lines (the
  derived 'XLA Ops'/'XLA Modules' lines would count them twice). On a CPU:
  every host-thread event that names an HLO op.
  """
  data = jax.profiler.ProfileData.from_file(xplane_path)
  devices = [pl for pl in data.planes if pl.name.startswith('/device:')]
  streams = [ln for pl in devices for ln in pl.lines if ln.name.startswith('Stream')]
  if streams:
    return _event_seconds(streams), 'device stream kernels'
  if devices:
    lines = [
        ln
        for pl in devices
        for ln in pl.lines
        if ln.name not in ('XLA Modules', 'XLA Ops', 'Steps')
    ]
    times = _event_seconds(lines)
    if times:
      return times, 'device plane events'
  hosts = [ln for pl in data.planes if pl.name.startswith('/host:') for ln in pl.lines]
  return _event_seconds(hosts), 'host thread events (XLA:CPU thunks)'


def latest_trace(directory: str) -> str:
  """The newest `*.xplane.pb` under `directory`."""
  files = glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True)
  if not files:
    raise FileNotFoundError(f'no *.xplane.pb under {directory}: did jax.profiler.trace run?')
  return max(files, key=os.path.getmtime)


def _is_control(name: str, instrs: dict[str, Instruction]) -> bool:
  """Whether op `name` is a loop/conditional/call, whose events (on a CPU)
  enclose the ops of its body: counting both would count them twice."""
  ins = instrs.get(name)
  return ins.opcode in _CONTROL if ins is not None else bool(_CONTROL_NAME.match(name))


def summarise(
    times: collections.Counter, instrs: dict[str, Instruction], top: int = TOP_OPS
) -> dict[str, Any]:
  """The record fields of a profile: op seconds by category and the top ops.

  Loops, conditionals and calls are left out: their events enclose their
  bodies' ops, which are counted themselves.

  Args:
    times: {(module, op name): seconds}.
    instrs: parsed HLO of the modules (names are looked up without the module).
    top: how many of the longest ops to list.
  """
  control = {key for key in times if _is_control(key[1], instrs)}
  times = collections.Counter({k: v for k, v in times.items() if k not in control})
  total = sum(times.values())
  by_cat = collections.Counter()
  rows = []
  by_comp = _computation_members(instrs)
  for (module, name), sec in times.most_common():
    facts = classify(name, instrs, by_comp)
    by_cat[facts['category']] += sec
    if len(rows) < top:
      rows.append(
          {
              'op': name,
              'module': module,
              'seconds': sec,
              'fraction': sec / total if total else 0.0,
              **facts,
          }
      )
  convs = [
      i
      for i in instrs.values()
      if i.opcode == 'convolution' or (i.target and 'conv' in i.target.lower())
  ]
  return {
      'op_seconds': total,
      'ops': len(times),
      'control_flow_ops_left_out': len(control),
      'by_category_seconds': dict(by_cat.most_common()),
      'by_category_fraction': {k: v / total for k, v in by_cat.most_common()} if total else {},
      'top_ops': rows,
      'hlo_convolutions': len(convs),
      'hlo_grouped_convolutions': sum(i.groups > 1 for i in convs),
      'hlo_convolution_layouts': dict(
          collections.Counter(i.dim_labels for i in convs if i.dim_labels).most_common()
      ),
  }


def profile(
    fn: Callable[[], Any], directory: str, hlo_texts: Iterable[str] = (), top: int = TOP_OPS
) -> dict[str, Any]:
  """Runs `fn` once under `jax.profiler.trace(directory)` and summarises it.

  Args:
    fn: the call to profile; its result is waited for inside the trace. Call
      it once before, so that compilation stays out of the trace.
    directory: where the trace is written (kept, for TensorBoard/Perfetto).
    hlo_texts: optimised HLO texts of the programs `fn` runs
      (`compiled.as_text()`), to classify ops; ops of other programs are
      'unknown'.
    top: how many of the longest ops to list.

  Returns:
    {'trace': path, 'trace_source': which events were summed,
     'traced_call_seconds' (wall time of the traced call, tracing included),
     'op_seconds_over_call_seconds', 'op_seconds',
     'ops', 'control_flow_ops_left_out', 'by_category_seconds', 'by_category_fraction', 'top_ops',
     'hlo_convolutions', 'hlo_grouped_convolutions', 'hlo_convolution_layouts'}.
  """
  os.makedirs(directory, exist_ok=True)
  with jax.profiler.trace(directory):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    wall = time.perf_counter() - t0
  path = latest_trace(directory)
  times, source = op_seconds(path)
  instrs = {}
  for text in hlo_texts:
    instrs.update(parse_hlo(text))
  rec = summarise(times, instrs, top)
  # Well below 1 on an accelerator: the device sat idle (launch overhead,
  # host work); above 1 on a CPU: ops ran on several threads at once.
  return {
      'trace': path,
      'trace_source': source,
      'traced_call_seconds': wall,
      'op_seconds_over_call_seconds': rec['op_seconds'] / wall,
      **rec,
  }
