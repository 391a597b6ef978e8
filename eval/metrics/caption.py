"""Caption metrics through pycocoevalcap: BLEU-1..4, CIDEr(-D), ROUGE-L; METEOR and SPICE only with Java.
Also exact match, and per-attribute accuracy where every reference is an attribute caption (below).

Tokenization is eval.metrics.ptb (pure Python) rather than pycocoevalcap's Java PTBTokenizer, so the
BLEU/CIDEr/ROUGE-L numbers do not depend on Java being installed.

BLEU alone misleads on templated captions: one constant caption shares most n-grams with every reference
(BLEU-4 ~0.3 on the attribute captions), so exact match and attribute accuracy are what tell learning.
"""
from __future__ import annotations

import os
import re
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from eval.metrics.ptb import ptb_tokenize, tokenize_captions

# The attribute caption: one sentence naming what is drawn (tools.synthetic_data writes it). Every slot is one
# word, so a caption of this form is judged attribute by attribute.
ATTRIBUTE_CAPTION = "A {colour} {shape} on a {background} background."
CAPTION_ATTRIBUTES = ("colour", "shape", "background")
_ATTRIBUTE_PATTERN = re.compile(r"^\s*an? (?P<colour>\w+) (?P<shape>\w+) on an? (?P<background>\w+) background\W*$",
                                re.IGNORECASE)


def caption_attributes(caption: str) -> dict[str, str] | None:
    """{colour, shape, background} (lower-cased) of an attribute caption; None for any other sentence."""
    match = _ATTRIBUTE_PATTERN.match(caption)
    return {k: v.lower() for k, v in match.groupdict().items()} if match else None


def exact_match(prediction: str, references: list[str]) -> bool:
    """The prediction equals one reference word for word (case, punctuation and spacing ignored)."""
    tokens = ptb_tokenize(prediction)
    return any(tokens == ptb_tokenize(r) for r in references)


def attribute_hits(prediction: str, references: list[str]) -> dict[str, bool] | None:
    """Per attribute: does the prediction name the reference's value? None unless every reference is an
    attribute caption; an answer of another form names no attribute."""
    wanted = [caption_attributes(r) for r in references]
    if not wanted or any(w is None for w in wanted):
        return None
    said = caption_attributes(prediction) or {}
    return {a: any(said.get(a) == w[a] for w in wanted) for a in CAPTION_ATTRIBUTES}


def java_metrics_available() -> dict[str, bool]:
    """METEOR ships its jar; SPICE also needs Stanford CoreNLP models that pycocoevalcap downloads on
    first use, which we never do at eval time."""
    java = shutil.which("java") is not None
    import pycocoevalcap.spice as spice_pkg
    spice_models = os.path.exists(os.path.join(os.path.dirname(spice_pkg.__file__), "lib",
                                               "stanford-corenlp-3.6.0.jar"))
    return {"meteor": java, "spice": java and spice_models}


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]],
                   *, java_metrics: bool = True) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(corpus scores, per-id scores) for predictions[id] against references[id] (one or more each)."""
    if set(predictions) != set(references):
        missing = sorted(set(predictions) ^ set(references))[:5]
        raise ValueError(f"caption predictions and references cover different ids, e.g. {missing}")
    if not predictions:
        raise ValueError("no caption predictions to score")
    ids = sorted(predictions)
    res = tokenize_captions({i: [predictions[i]] for i in ids})
    gts = tokenize_captions({i: list(references[i]) for i in ids})
    corpus: dict[str, float] = {}
    per_id: dict[str, dict[str, float]] = {i: {} for i in ids}

    bleu, bleu_per_id = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"bleu_{n + 1}"] = float(bleu[n])
        for i, value in zip(ids, bleu_per_id[n]):
            per_id[i][f"bleu_{n + 1}"] = float(value)
    scorers = [("cider", Cider()), ("rouge_l", Rouge())]
    available = java_metrics_available() if java_metrics else {}
    if available.get("meteor"):
        from pycocoevalcap.meteor.meteor import Meteor
        scorers.append(("meteor", Meteor()))
    if available.get("spice"):
        from pycocoevalcap.spice.spice import Spice
        scorers.append(("spice", Spice()))
    for name, scorer in scorers:
        score, scores = scorer.compute_score(gts, res)
        corpus[name] = float(score)
        for i, value in zip(ids, scores):
            per_id[i][name] = float(value if not isinstance(value, dict) else value["All"]["f"])

    for i in ids:
        per_id[i]["exact_match"] = float(exact_match(predictions[i], references[i]))
    corpus["exact_match"] = sum(per_id[i]["exact_match"] for i in ids) / len(ids)
    hits = {i: attribute_hits(predictions[i], references[i]) for i in ids}
    if all(h is not None for h in hits.values()):  # attribute accuracy only where the data defines it
        for attribute in CAPTION_ATTRIBUTES:
            for i in ids:
                per_id[i][f"{attribute}_acc"] = float(hits[i][attribute])
            corpus[f"{attribute}_acc"] = sum(per_id[i][f"{attribute}_acc"] for i in ids) / len(ids)
    return corpus, per_id


def caption_failure(prediction: str, references: list[str]) -> str | None:
    """Why a caption is useless, if it is: the kinds a random or broken model produces."""
    tokens = ptb_tokenize(prediction)
    if not tokens:
        return "empty answer"
    if len(tokens) >= 4 and len(set(tokens)) <= len(tokens) // 3:
        return "repetitive text"
    ref_words = {t for r in references for t in ptb_tokenize(r)}
    if not ref_words & set(tokens):
        return "no word shared with the references"
    return None
