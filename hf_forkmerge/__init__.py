"""hf-forkmerge: ForkMerge auxiliary-task learning as a Transformers Trainer.

The public names load lazily, so that `hf-forkmerge --help` and recipe checks do not pay for torch and transformers.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "ForkMergeConfig": "config",
    "ForkMergeTrainer": "trainer",
    "MultiTaskConfig": "modeling",
    "MultiTaskModel": "modeling",
    "greedy_search": "search",
    "weighted_sum": "merging",
    "merge_lora_state": "merging",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
