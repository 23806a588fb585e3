"""hf-forkmerge: ForkMerge auxiliary-task learning as a Transformers Trainer."""

from .config import ForkMergeConfig
from .modeling import MultiTaskConfig, MultiTaskModel
from .search import greedy_search
from .merging import weighted_sum
from .trainer import ForkMergeTrainer

__all__ = ["ForkMergeConfig", "ForkMergeTrainer", "MultiTaskConfig", "MultiTaskModel", "greedy_search", "weighted_sum"]
__version__ = "0.1.0"
