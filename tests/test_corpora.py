"""The packaged corpora: splits that do not leak into the auxiliaries, labels as documented."""

import numpy as np
import pytest

from hf_forkmerge import corpora


def test_rotten_tomatoes_held_out_reviews_never_reach_the_subjectivity_task():
    sentiment = corpora.rotten_tomatoes_sentiment(num_train=200, num_validation=300, num_test=400, seed=1)
    assert {k: len(v) for k, v in sentiment.items()} == {"test": 400, "validation": 300, "train": 200}
    assert set(sentiment["train"]["label"]) == {0, 1}
    held_out = set(sentiment["validation"]["text"]) | set(sentiment["test"]["text"])
    subjective = corpora.subjectivity(size=1000, seed=1, num_validation=300, num_test=400)["train"]
    reviews = {text for text, label in zip(subjective["text"], subjective["label"]) if label == 1}
    assert len(reviews) == 500 and not reviews & held_out


def test_word_polarity_has_both_classes_of_single_words():
    words = corpora.word_polarity()["train"]
    assert len(words) > 3000 and set(words["label"]) == {0, 1}
    assert all(" " not in word and "#" not in word for word in words["text"][:200])


def test_digit_auxiliaries_use_no_held_out_image():
    target = corpora.digits(num_train=100, num_validation=300, num_test=700, seed=2)
    held_out = {np.asarray(image).tobytes() for split in ("validation", "test") for image in target[split]["pixel_values"]}
    parity = corpora.digit_parity(seed=2)["train"]
    assert len(parity) == 1797 - 1000 and set(parity["label"]) == {0, 1}
    assert not {np.asarray(image).tobytes() for image in parity["pixel_values"]} & held_out
    rotation = corpora.digit_rotation(seed=2)["train"]
    assert set(rotation["label"]) == {0, 1, 2, 3}
    noise = corpora.digits_random_labels(seed=2)["train"]
    assert len(set(noise["label"])) == 10


@pytest.mark.parametrize(
    "corpus, package",
    [(corpora.wordnet_supersense, "wordnet-base"), (corpora.fashion_mnist, "dataset-fashion-mnist")],
)
def test_debian_corpora_load_or_name_their_package(corpus, package):
    try:
        data = corpus(seed=0)
    except FileNotFoundError as missing:
        assert f"apt-get install {package}" in str(missing)
        return
    train = data["train"]
    assert len(train) > 0 and min(train["label"]) >= 0
    if package == "dataset-fashion-mnist":
        assert np.asarray(train[0]["pixel_values"]).shape == (1, 14, 14)
        assert len(data["validation"]) == 1000 and len(data["test"]) == 2000
    else:
        assert max(train["label"]) == 25
