r"""A labelling project's files between calls, and the text a call prints.

    labels = project.read_labels('labels.csv')   # Labels({'a.png': 'cat'}, {'a.png': 2})
    state = project.load_state(W)                # dict, or None before the first call
    changes = project.changes_since(state, prints, labels.labels)

labels.csv (`read_labels`; the class list is fixed by `resolve_classes`),
W/state.json (`load_state`, `write_state`) and W/next_batch.csv
(`write_batch`) are as the command's docstring (jal/label/__main__.py, its
--help) describes them. `fingerprints` and `changes_since` say what changed
since the last call; `summary` is the text a call prints. Nothing here
trains or decodes: `jal.label.advise` reads a project through this module
alone.
"""

import csv
import dataclasses
import io
import json
import os
import re
from typing import Any

from jal import checkpoints
from jal.label import images as images_lib

STATE_FILE = 'state.json'
BATCH_FILE = 'next_batch.csv'
STATE_VERSION = 1
_MAX_NAMED = 5
# Config fields that may change between calls of one project.
_PER_CALL_FIELDS = ('query_size', 'strategy', 'strategy_options', 'images.num_workers')


def named(items) -> str:
  """The first few items, comma-separated, and how many there are in all."""
  items = list(items)
  more = f', ... ({len(items)} in all)' if len(items) > _MAX_NAMED else ''
  return ', '.join(str(i) for i in items[:_MAX_NAMED]) + more


def _natural_key(label: str):
  """Sorts '2' before '10' when labels are integers, else alphabetically."""
  return (0, int(label), '') if re.fullmatch(r'-?\d+', label) else (1, 0, label)


# ----------------------------------------------------------------------------
# Reading labels.csv.


@dataclasses.dataclass(frozen=True)
class Labels:
  """The labels of labels.csv.

  Attributes:
    labels: filename -> label, one entry per labeled file.
    lines: filename -> the line of its (first) row, for messages.
  """

  labels: dict[str, str]
  lines: dict[str, int]


def _clean_name(name: str) -> str:
  name = name.strip().replace('\\', '/')
  while name.startswith('./'):
    name = name[2:]
  return name


def read_labels(path: str) -> Labels:
  """Parses a `filename,label` CSV.

  Extra columns are ignored; rows with an empty label are unlabeled files.
  The same file twice with the same label is one label.

  Raises:
    FileNotFoundError: no such file.
    ValueError: no header, a row without a filename, or one file with two
      different labels.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'labels file not found: {path} (create it with the header line filename,label)'
    )
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text: {e}') from e
  reader = csv.reader(io.StringIO(text))
  header = [h.strip().lower() for h in next(reader, [])]
  if 'filename' not in header or 'label' not in header:
    raise ValueError(
        f'{path} must start with the header filename,label; got '
        f'{",".join(header) or "an empty file"}'
    )
  fcol, lcol = header.index('filename'), header.index('label')
  labels, lines = {}, {}
  for line, row in enumerate(reader, start=2):
    if not any(cell.strip() for cell in row):
      continue
    name = _clean_name(row[fcol]) if fcol < len(row) else ''
    label = row[lcol].strip() if lcol < len(row) else ''
    if not name:
      raise ValueError(f'{path} line {line}: no filename')
    if not label:
      continue
    if name in labels and labels[name] != label:
      raise ValueError(
          f'{path}: {name} has conflicting labels {labels[name]!r} (line '
          f'{lines[name]}) and {label!r} (line {line}); keep one row per file'
      )
    if name not in labels:
      labels[name], lines[name] = label, line
  return Labels(labels, lines)


def resolve_classes(stored, requested, labels: Labels, csv_path: str) -> list[str] | None:
  """The project's class list.

  Args:
    stored: the list in the workdir's state, or None before it is fixed.
    requested: --classes or config.classes, or None.
    labels: this call's labels.
    csv_path: for messages.

  Returns:
    The class names in order, or None while there is neither a label nor a
    requested list.

  Raises:
    ValueError: a requested list that differs from the stored one, repeats
      a name or has fewer than 2 classes; a label outside the list.
  """
  requested = [str(c).strip() for c in requested] if requested else None
  if requested is not None:
    if len(set(requested)) != len(requested) or len(requested) < 2:
      raise ValueError(f'--classes must name at least 2 distinct classes, got {requested}')
    if stored is not None and requested != list(stored):
      raise ValueError(
          f'--classes {requested} differs from the class list fixed at the first '
          f'call ({list(stored)}); start a new --workdir to change it'
      )
  classes = list(stored) if stored is not None else requested
  if classes is None:
    if not labels.labels:
      return None
    classes = sorted(set(labels.labels.values()), key=_natural_key)
    if len(classes) < 2:
      raise ValueError(
          f'{csv_path} has labels of one class only ({classes[0]!r}); label an '
          'image of another class or pass --classes naming every class'
      )
  valid = set(classes)
  for name, label in labels.labels.items():
    if label not in valid:
      raise ValueError(
          f'{csv_path} line {labels.lines[name]}: unknown label {label!r} for '
          f'{name}; valid: {", ".join(classes)} (fixed at the first call)'
      )
  return classes


def check_files(labels: Labels, names: list[str], csv_path: str, folder: str) -> None:
  """Raises ValueError if labels.csv names files that are not in the folder."""
  present = set(names)
  missing = [n for n in labels.labels if n not in present]
  if missing:
    missing.sort(key=lambda n: labels.lines[n])
    raise ValueError(
        f'{csv_path} names {len(missing)} file(s) not in {folder}: '
        f'{named(f"{n} (line {labels.lines[n]})" for n in missing)}'
    )


# ----------------------------------------------------------------------------
# Images: fingerprints and changes since the last call.


def fingerprints(folder: str, names: list[str], previous: dict) -> dict[str, dict]:
  """`{name: {size, mtime_ns, sha256}}`; a file with the size and mtime it
  had at the last call keeps its stored hash without being read."""
  out = {}
  for name in names:
    path = os.path.join(folder, name)
    size, mtime = images_lib.file_stat(path)
    old = previous.get(name)
    if old and old['size'] == size and old['mtime_ns'] == mtime:
      out[name] = old
    else:
      out[name] = {'size': size, 'mtime_ns': mtime, 'sha256': images_lib.sha256(path)}
  return out


def changes_since(
    state: dict | None, prints: dict[str, dict], labels: dict[str, str]
) -> dict[str, Any]:
  """What differs from the last call: the user is told all of it.

  Returns:
    dict with lists `images_vanished` ([name, old label or None]),
    `images_changed` ([name, label or None]: same name, other bytes),
    `labels_changed` ([name, old, new]), `labels_removed` ([name, old]:
    the row is gone, the image is still there), and counts `new_images`,
    `new_labels`, `batch_labeled` (of the last batch, how many now have a
    label) and `batch_size`.
  """
  if state is None:
    return {
        'images_vanished': [],
        'images_changed': [],
        'labels_changed': [],
        'labels_removed': [],
        'new_images': len(prints),
        'new_labels': len(labels),
        'batch_labeled': 0,
        'batch_size': 0,
    }
  old_images, old_labels = state['images'], state['labels']
  batch = state['calls'][-1]['batch'] if state['calls'] else []
  return {
      'images_vanished': [[n, old_labels.get(n)] for n in sorted(old_images) if n not in prints],
      'images_changed': [
          [n, labels.get(n)]
          for n in sorted(prints)
          if n in old_images and old_images[n]['sha256'] != prints[n]['sha256']
      ],
      'labels_changed': [
          [n, old_labels[n], labels[n]]
          for n in sorted(labels)
          if n in old_labels and old_labels[n] != labels[n]
      ],
      'labels_removed': [
          [n, old_labels[n]] for n in sorted(old_labels) if n not in labels and n in prints
      ],
      'new_images': sum(n not in old_images for n in prints),
      'new_labels': sum(n not in old_labels for n in labels),
      'batch_labeled': sum(n in labels for n in batch),
      'batch_size': len(batch),
  }


def change_lines(changes: dict[str, Any]) -> list[str]:
  """One human-readable line per kind of change that happened."""
  out = []
  if changes['images_vanished']:
    out.append(
        f'{len(changes["images_vanished"])} image(s) vanished from the folder: '
        + named(n if l is None else f'{n} (was labeled {l})' for n, l in changes['images_vanished'])
    )
  if changes['images_changed']:
    out.append(
        f'{len(changes["images_changed"])} image(s) have new content under the same '
        'name: '
        + named(
            n if l is None else f'{n} (labeled {l}: check the label)'
            for n, l in changes['images_changed']
        )
    )
  if changes['labels_changed']:
    out.append(
        f'{len(changes["labels_changed"])} label(s) changed: '
        + named(f'{n} {a} -> {b}' for n, a, b in changes['labels_changed'])
    )
  if changes['labels_removed']:
    out.append(
        f'{len(changes["labels_removed"])} label(s) removed from the labels file: '
        + named(f'{n} (was {l})' for n, l in changes['labels_removed'])
    )
  return out


# ----------------------------------------------------------------------------
# The workdir: state.json and next_batch.csv.


def config_identity(config) -> dict:
  """The config as a dict, minus the fields that may change between calls."""
  d = json.loads(config.to_json_best_effort(sort_keys=True))
  for field in _PER_CALL_FIELDS:
    node = d
    *path, last = field.split('.')
    for p in path:
      node = node.get(p, {})
    node.pop(last, None)
  return d


def load_state(workdir: str) -> dict | None:
  """W/state.json as a dict, or None before the first call.

  Raises:
    ValueError: the state is of another version.
  """
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    state = json.load(f)
  if state.get('version') != STATE_VERSION:
    raise ValueError(
        f'{path} has state version {state.get("version")}, expected '
        f'{STATE_VERSION}; use another --workdir'
    )
  return state


def write_state(workdir: str, state: dict) -> None:
  """Writes W/state.json atomically, stamped with `STATE_VERSION`."""
  checkpoints.atomic_write(
      os.path.join(workdir, STATE_FILE),
      json.dumps({'version': STATE_VERSION, **state}, indent=1, sort_keys=True) + '\n',
  )


def write_batch(path: str, rows: list[dict]) -> None:
  """Writes next_batch.csv atomically: `filename,score,rank,predicted,confidence`."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['filename', 'score', 'rank', 'predicted', 'confidence'])
  for r in rows:
    writer.writerow([r['filename'], r['score'], r['rank'], r['predicted'], r['confidence']])
  checkpoints.atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------
# What the person sees.


def _counts_text(counts: dict[str, int]) -> str:
  return ', '.join(f'{c}: {n}' for c, n in counts.items()) or 'none'


def validation_text(v: dict | None) -> str:
  if v is None:
    return 'none (fewer than 2 labels)'
  how = (
      'a stratified held-out part'
      if v['method'] == 'holdout'
      else f'{v["folds"]}-fold stratified cross-validation'
  )
  return (
      f'accuracy {v["accuracy"]:.3f} [{v["lo"]:.3f}, {v["hi"]:.3f}] '
      f'({100 * v["confidence"]:.0f}% Wilson interval, {v["correct"]}/{v["n"]} held-out '
      f'labels, {how}); balanced accuracy {v["balanced_accuracy"]:.3f}'
  )


def summary(entry: dict, calls: list[dict], images_dir: str, batch_path: str) -> str:
  """The text a call prints: counts, changes, validation, batch, time."""
  ch = entry['changes']
  lines = [
      f'jal.label call {entry["call"]}: {entry["n_images"]} images in {images_dir}'
      + (f' ({len(entry["skipped"])} unreadable, skipped)' if entry['skipped'] else '')
  ]
  since = (
      f' (+{ch["new_labels"]} new'
      + (
          f'; {ch["batch_labeled"]} of the {ch["batch_size"]} files of the last batch'
          if ch['batch_size']
          else ''
      )
      + ')'
      if entry['call'] > 1
      else ''
  )
  lines.append(f'Labeled: {entry["n_labeled"]}{since}; per class: {_counts_text(entry["counts"])}')
  if entry['call'] > 1:
    found = change_lines(ch)
    lines.append('Changes since the last call: ' + ('none' if not found else found[0]))
    lines += ['  ' + l for l in found[1:]]
  lines.append(f'Validation: {validation_text(entry["validation"])}')
  if entry['batch']:
    lines.append(
        f'Next batch: {len(entry["batch"])} files chosen by {entry["strategy"]}, '
        f'score = {entry["score"]} -> {batch_path}'
    )
  else:
    lines.append(f'Next batch: none, every image is labeled ({batch_path} is empty)')
  if entry['predicted_counts']:
    lines.append(
        f'Predicted classes of the unlabeled images: {_counts_text(entry["predicted_counts"])}'
    )
  s = entry['seconds']
  lines.append(
      f'Time: {s["total"]:.1f} s (decode {s["decode"]:.1f} s, validation '
      f'{s["validation"]:.1f} s, final fit {s["fit"]:.1f} s, scoring and selection '
      f'{s["score_select"]:.1f} s)'
  )
  if len(calls) > 1:
    hist = [
        f'{c["n_labeled"]}:' + (f'{c["validation"]["accuracy"]:.3f}' if c['validation'] else '-')
        for c in calls
    ]
    lines.append('History (labels:accuracy): ' + ' -> '.join(hist))
  return '\n'.join(lines) + '\n'
