r"""The practitioner's labelling workflow, built around the research loop.

Two commands turn jal into a labelling loop for a folder of your own PNG/JPEG
images:

    python -m jal.label --images=DIR --labels=labels.csv --workdir=W --query=50
    # label the files listed in W/next_batch.csv: add `filename,label` rows
    # to labels.csv, then run the same command again.
    python -m jal.label.advise --workdir=W    # which strategy, and how sure one can be

Each `jal.label` call trains the configured ensemble (configs/label.py) with
the research loop's `jal.experiment.Experiment` on every label, estimates its
accuracy on held-out labels and asks for the next batch; `jal.label.advise`
places the project in a regime of the study and cites jal's measured tables
in results/.

Modules:

    __main__.py   the flags of `python -m jal.label`
    session.py    one call: validate, train, score, write next_batch.csv
    project.py    labels.csv, W/state.json, next_batch.csv, what changed, the summary
    images.py     reading the folder: listing, screening, hashing, decoding, a cache
    advise.py     `python -m jal.label.advise`: strategy advice
    evidence.py   the regimes, and jal's measured tables as evidence for advise

The research loop (`jal.experiment`, `jal.main`) never imports this package;
`jal.report.verdict` reads `evidence.setting_features` to place results/ folders.
"""
