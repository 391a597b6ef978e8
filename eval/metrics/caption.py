"""Caption metrics through pycocoevalcap: BLEU-1..4, CIDEr(-D), ROUGE-L; METEOR and SPICE only with Java.

Tokenization is eval.metrics.ptb (pure Python) rather than pycocoevalcap's Java PTBTokenizer, so the
BLEU/CIDEr/ROUGE-L numbers do not depend on Java being installed.
"""
from __future__ import annotations

import os
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from eval.metrics.ptb import ptb_tokenize, tokenize_captions


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
