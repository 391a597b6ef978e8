"""Caption tokenization and metrics against known values."""
import math
import shutil

import pytest

from eval.metrics.caption import caption_failure, caption_scores
from eval.metrics.ptb import ptb_tokenize

# Left: input caption; right: what pycocoevalcap's Java PTBTokenizer (Stanford CoreNLP 3.4.1,
# -preserveLines -lowerCase) followed by its punctuation filter produced for it.
JAVA_PTB = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs' toys (red and blue) aren't on the \"couch\"; it's Mr. Smith's, isn't it?",
     "two dogs toys -lrb- red and blue -rrb- are n't on the couch it 's mr. smith 's is n't it"),
    ("The U.S. flag at 3.5 p.m. cost $5,000 -- or 50% off!", "the u.s. flag at 3.5 p.m. cost $ 5,000 or 50 % off"),
    ("I can't, won't, cannot and gonna do it. She'd've said 'hello' don't.",
     "i ca n't wo n't can not and gon na do it she 'd 've said hello do n't"),
    ("A black-and-white photo of a 2-year-old kid's bike:   wow!?",
     "a black-and-white photo of a 2-year-old kid 's bike wow !?"),
    ("There are two giraffes standing in the grass next to a tree...",
     "there are two giraffes standing in the grass next to a tree"),
]


@pytest.mark.parametrize("caption, expected", JAVA_PTB)
def test_tokenizer_matches_java_ptb(caption, expected):
    assert " ".join(ptb_tokenize(caption)) == expected


def test_bleu_and_rouge_hand_computed():
    # 1-gram 5/6, 2-gram 3/5, 3-gram 1/4, 4-gram 0/3, equal lengths (brevity penalty 1);
    # LCS 5 of 6 words both ways -> ROUGE-L F = 5/6.
    corpus, per_id = caption_scores({"1": "The cat sat on the mat."}, {"1": ["the cat is on the mat"]},
                                    java_metrics=False)
    assert corpus["bleu_1"] == pytest.approx(5 / 6, abs=1e-8)
    assert corpus["bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
    assert corpus["bleu_3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-8)
    assert corpus["bleu_4"] < 1e-3  # no 4-gram matches; pycocoevalcap smooths with 1e-15
    assert corpus["rouge_l"] == pytest.approx(5 / 6)
    assert per_id["1"]["rouge_l"] == pytest.approx(5 / 6)


def test_cider_hand_computed():
    # Every n-gram occurs in one of the 2 reference sets: idf = log 2 for all. Image "2" matches exactly:
    # cosine 1 for n=1,2 and no 3/4-grams -> 10 * (1+1+0+0)/4 = 5. Image "1": n=1 cosine = log2^2 /
    # (sqrt2 log2)^2 = 1/2, nothing else -> 10 * 0.5/4 = 1.25. Corpus: mean = 3.125.
    corpus, per_id = caption_scores({"1": "a c", "2": "c d"}, {"1": ["a b"], "2": ["c d"]}, java_metrics=False)
    assert per_id["1"]["cider"] == pytest.approx(1.25)
    assert per_id["2"]["cider"] == pytest.approx(5.0)
    assert corpus["cider"] == pytest.approx(3.125)


def test_all_references_of_an_image_count():
    corpus, _ = caption_scores({"1": "a dog runs"}, {"1": ["a cat sleeps", "a dog runs"]}, java_metrics=False)
    assert corpus["rouge_l"] == pytest.approx(1.0)
    assert corpus["bleu_1"] == pytest.approx(1.0, abs=1e-8)


def test_java_metrics_follow_java():
    corpus, _ = caption_scores({"1": "a b c d", "2": "c d e f"}, {"1": ["a b c d"], "2": ["c d e f"]})
    if shutil.which("java"):
        assert corpus["meteor"] == pytest.approx(1.0)
    else:
        assert "meteor" not in corpus


def test_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="different ids"):
        caption_scores({"1": "a"}, {"2": ["a"]}, java_metrics=False)


@pytest.mark.parametrize("prediction, kind", [
    ("\n\n  ", "empty answer"),
    ("dog dog dog dog dog dog", "repetitive text"),
    ("zebra umbrella", "no word shared with the references"),
    ("a red circle", None),
])
def test_caption_failure_kinds(prediction, kind):
    assert caption_failure(prediction, ["A red circle on a white background."]) == kind


def test_exact_match_ignores_case_punctuation_and_spacing():
    corpus, per_id = caption_scores({"1": "a RED circle on a white background", "2": "A red circle."},
                                    {"1": ["A red circle on a white background."], "2": ["A red square."]},
                                    java_metrics=False)
    assert per_id["1"]["exact_match"] == 1.0 and per_id["2"]["exact_match"] == 0.0
    assert corpus["exact_match"] == 0.5


def test_attribute_accuracy_counts_each_slot():
    references = {"1": ["A red circle on a white background."], "2": ["A blue square on a black background."],
                  "3": ["A green triangle on a gray background."], "4": ["A red square on a gray background."]}
    predictions = {"1": "A red circle on a white background.",  # all three right
                   "2": "A blue circle on a white background.",  # colour only
                   "3": "A green triangle on a black background.",  # colour and shape
                   "4": "something else entirely"}  # names no attribute
    corpus, per_id = caption_scores(predictions, references, java_metrics=False)
    assert (corpus["colour_acc"], corpus["shape_acc"], corpus["background_acc"]) == (0.75, 0.5, 0.25)
    assert per_id["2"]["colour_acc"] == 1.0 and per_id["2"]["shape_acc"] == 0.0
    assert corpus["exact_match"] == 0.25


def test_attribute_accuracy_only_where_every_reference_is_an_attribute_caption():
    corpus, _ = caption_scores({"1": "A red circle on a white background.", "2": "a dog"},
                               {"1": ["A red circle on a white background."], "2": ["a dog runs"]},
                               java_metrics=False)
    assert "colour_acc" not in corpus and "exact_match" in corpus


def test_attribute_caption_template_parses_back():
    from eval.metrics.caption import ATTRIBUTE_CAPTION, caption_attributes

    caption = ATTRIBUTE_CAPTION.format(colour="yellow", shape="triangle", background="black")
    assert caption_attributes(caption) == {"colour": "yellow", "shape": "triangle", "background": "black"}
    assert caption_attributes("A yellow triangle.") is None
