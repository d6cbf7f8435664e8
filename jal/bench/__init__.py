r"""Throughput benchmarks of jal's hot paths, one JSON object per figure.

    python -m jal.bench                                   # every case, full shapes
    python -m jal.bench --cases=k_center --size=small     # seconds on a CPU
    python -m jal.bench --cases=ensemble_train --members=1,5 --steps=64

Cases:
  ensemble_train  training images/s of `train.fit` for N in --members,
                  ResNet-18 (CIFAR stem) and LeNet, per training plan
                  (`train.Plan`): 'vmap_program' (members vmapped, one
                  program) for every N, with the ratio of aggregate images/s
                  of the largest N to the smallest; 'in_turn_program' (one
                  member after another, one program) for the largest N, the
                  reference jal must never be slower than; 'sharded' (the
                  members over --devices devices); and 'auto', what jal's
                  loop runs (`train.resolve_plan`), timed too when it is
                  not one of the above (a 'step' plan on a CPU). Records
                  carry the plan. `--train_modes=auto` times only the loop's
                  own plan, for every N (ResNet-18 on a CPU, where the
                  program plans take tens of minutes).
  k_center        `kernels.k_center_greedy` seconds, against the memory
                  bandwidth bound n*d*4*k / bandwidth, the bandwidth measured
                  in the same run by a large on-device `jnp.sum`.
  score_pool      pool images/s of `infer.predict` (every member's logits and
                  member 0's embeddings), ResNet-18.
  round           one acquisition round of configs/imbalance.py (train /
                  eval / score / select seconds) for 'ensembles' and
                  'coreset', on synthetic data of the config's sizes.

With --vs=torch (PyTorch from `pip install -e ".[bench]"`), jal is timed
against a plain PyTorch implementation of the same cases instead, the two
alternating in one process (`jal.bench.torch_cases`): LeNet ensemble training,
ResNet-18 training and inference, LeNet pool scoring, and one MNIST round end
to end as processes; each record gives both sides' min/median/max and the
ratio jal time / PyTorch's best memory format.

    python -m jal.bench --vs=torch                        # the full comparison
    python -m jal.bench --vs=torch --size=small           # every case, seconds

Every line of stdout is one JSON object with `case`, the device and JAX
version, the shapes, the measured values (units in the key names) and the
timing method; logs go to stderr. Timings are medians of --repeats calls
after a warm-up call, each ended by `jax.block_until_ready`; compilation is
timed separately (ahead-of-time `lower().compile()` where the benchmarked
function is one jitted program, a 'program' plan's fit included, else first
call minus the median). The round case times round 1 once, after a round 0
that compiled everything.

With --profile_dir=DIR, every timed program of ensemble_train, k_center and
score_pool is also traced once (`jal.bench.profiling.profile`): a record with
`mode: profile` gives its op time by category (grouped convolutions apart),
the top ops with their HLO facts, and the trace's path under DIR.

Modules (importing `jal.bench` imports none; `python -m jal.bench` imports
torch_cases, and with it PyTorch, only with --vs=torch):
  __main__      the flags and main of `python -m jal.bench`.
  core          `Params` (shapes and settings), timing, profile records, the
                fields every record carries, random inputs.
  cases         jal's four cases and `run` (the records of several).
  profiling     a jax.profiler trace of one call, summarised by op category.
  torch_models  jal's models, recipes and MNIST loop in plain PyTorch.
  torch_cases   the --vs=torch cases, jal and PyTorch timed alternately, and
                `python -m jal.bench.torch_cases round|versus`.
"""
