"""qingbert (轻BERT): small, fast Chinese pretrained language models, from raw text to a served model.

The top level re-exports each stage's main function; ``qingbert.models.zoo`` is the model zoo; ``qingbert.load(DIR)``
opens any model folder for ``predict`` / ``encode`` on its fastest backend.
Importing qingbert does not import torch or transformers.
"""

from qingbert.data.prepare import PrepareConfig, load_prepared, prepare
from qingbert.data.vocab import build_vocab
from qingbert.deploy.inference import load
from qingbert.errors import QingbertError
from qingbert.models import zoo

__version__ = "0.1.0"

__all__ = ["QingbertError", "PrepareConfig", "prepare", "load_prepared", "build_vocab", "load", "zoo", "__version__"]
