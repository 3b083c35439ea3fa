"""Training, evaluation and ONNX export of recstream's recommender (training venv only).

Everything here needs torch and runs in ``.venv-train``; the worker environment
never imports this package (``recstream train|evaluate|export`` re-execute the
training interpreter, see :mod:`workers.model.launch`). The runtime side that
loads the exported artifacts is :mod:`workers.model`.

Modules, one job each:

- ``data``     MovieLens-100k from the RecBole wheel, item text, the splits.
- ``text``     all-MiniLM-L6-v2 (offline wheel): item text embeddings, ONNX wrapper.
- ``models``   SASRec, the content-aware SASRec, the two as one served model
                (SASRecPair), BPR-MF, A-LLMRec stage 1, and the inference wrappers.
- ``metrics``  ranking metrics and the evaluation protocols.
- ``train``    the training pipeline (``recstream train``).
- ``evaluate`` the evaluation report (``recstream evaluate``).
- ``export``   ONNX export + parity + model directory (``recstream export``).
"""

from pathlib import Path

__all__ = ["DEFAULT_HOME"]

# Only for runs without the launcher, which always passes --home from
# RECSTREAM_HOME: the training env must not import workers.settings (that
# pulls the worker-only LLM stack).
DEFAULT_HOME = Path(__file__).resolve().parents[2] / ".local"
