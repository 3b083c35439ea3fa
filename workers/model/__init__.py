"""The recommender model at run time: onnxruntime + tokenizers + numpy, no torch.

``recstream export`` writes a versioned model directory (see
:mod:`workers.model.manifest`); :class:`Scorer` loads it and scores many users
x candidates off the event loop; new catalog items become scoreable from
their text alone through :meth:`Scorer.add_items`. Training, evaluation and
export live in :mod:`workers.training` (the training venv); the ``recstream
train|evaluate|export`` commands re-execute that interpreter.
"""

from workers.model.manifest import ModelManifest, load_manifest
from workers.model.scorer import Scorer
from workers.model.settings import ModelSettings
from workers.model.text_encoder import TextEncoder

__all__ = ["ModelManifest", "ModelSettings", "Scorer", "TextEncoder", "load_manifest"]
