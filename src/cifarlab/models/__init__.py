"""Model families; importing this package registers every model.

python -c "from cifarlab.models import get_model; print(get_model('baseline_cnn'))"
"""

from cifarlab.models import fastnet, mobilenet, seed_cnns
from cifarlab.models.registry import get_model, list_models, register_model

__all__ = ["fastnet", "get_model", "list_models", "mobilenet", "register_model", "seed_cnns"]
