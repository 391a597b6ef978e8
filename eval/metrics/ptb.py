"""Pure-Python stand-in for pycocoevalcap's PTBTokenizer.

pycocoevalcap's tokenizer shells out to Stanford CoreNLP 3.4.1 (`java -cp stanford-corenlp-3.4.1.jar
...PTBTokenizer -preserveLines -lowerCase`) and writes a temp file into its own package folder. We
tokenize in Python instead so caption scores are identical with or without Java and never write into
site-packages. The rules below reproduce CoreNLP's output on caption-like text (checked token for token
against the jar in tests/unit/test_eval_caption.py): lower-casing, contractions split PTB-style ("are
n't", "it 's", "ca n't", "can not", "gon na"), punctuation split off except inside numbers, abbreviations
and hyphen/slash compounds, brackets written -lrb- / -rrb- / -lsb- ... (lower-cased, so pycocoevalcap's
punctuation filter keeps them, as it does with Java), then pycocoevalcap's punctuation filter.
Known differences (rare in captions): CoreNLP repeats a sentence-final abbreviation's period
("etc. ."), splits "c..." as "c. . .", and keeps "@home" / "<tag>" whole.
"""
from __future__ import annotations

import re

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, verbatim.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"}

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = r"(?:mr|mrs|ms|dr|jr|sr|st|vs|etc|inc|ltd|co|corp)\."
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na")}

_TOKEN = re.compile(
    r"(?:[a-z]\.){2,}"                  # u.s. e.g. p.m.
    rf"|{_ABBREVIATIONS}(?=\s|$|[,;:])"
    r"|\d+(?:[.,]\d+)+"                 # 3.5 5,000
    r"|\w+?(?=n't\b)"                   # are|n't, ca|n't
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"           # 's 're 've 'll 'd 'm
    r"|\w+(?:[-/]\w+)*"                 # words, black-and-white, a/b
    r"|--|\.\.\.|[!?]+|``|''"
    r"|\S"
)


def ptb_tokenize(text: str) -> list[str]:
    """Tokens of one caption, lower-cased, PTB-split, punctuation removed (as pycocoevalcap does)."""
    tokens = []
    for token in _TOKEN.findall(text.replace("\n", " ").lower()):
        token = _BRACKETS.get(token, token)
        if token == '"':
            continue  # CoreNLP turns it into `` or '', both filtered below
        tokens.extend(_SPLIT_WORDS.get(token, (token,)))
    return [t for t in tokens if t not in PUNCTUATIONS]


def tokenize_captions(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's tokenizer output shape: id -> list of space-joined token strings."""
    return {key: [" ".join(ptb_tokenize(c)) for c in texts] for key, texts in captions.items()}
