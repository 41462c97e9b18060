#!/usr/bin/env python3
"""Make two small zero-shot tasks from the held-out part of the shipped corpus:

    python3 tools/tasks/make_corpus_tasks.py [--corpus data/corpus/vim-doc] [--out data/tasks]
                                             [--items 200] [--seed 20240611]

writes data/tasks/vimdoc-choice.jsonl (HellaSwag-like: a passage, its true next line and three
lines from elsewhere) and data/tasks/vimdoc-cloze.jsonl (LAMBADA-like: a passage whose last word is
the continuation). Items come only from usr_40.txt .. usr_45.txt, the user-manual chapters that
launch/demo.sh holds out for validation (it trains on every other file of the corpus). The output
is deterministic (a fixed seed, files and lines in a fixed order); standard library only. See
tools/tasks/README.md.
"""

import argparse
import glob
import json
import os
import random
import re
import sys

MAX_CONTEXT = 400  # characters
HELD_OUT = re.compile(r"usr_4[0-9]\.txt$")  # as launch/demo.sh: grep -v '/usr_4[0-9]\.txt$'
FUNCTION_WORDS = set("""about after also been before both can't could does doesn't don't each from have
here into just like more most much must only other same should some such than that their them then
there these they this those very were what when where which while will with would your""".split())


def is_text(line):
    """A line of a paragraph of running text: not empty, not indented (examples, tables and tags
    are), no tab (tag and function tables), not a rule, a tag or link line, an example marker, a
    heading ("~" or all capitals)."""
    if not line or line[0] in " \t*|=-<>" or "\t" in line or line.rstrip() != line:
        return False
    return not line.endswith("~") and any(c.islower() for c in line)


def is_prose(line):
    """A text line good as a target: five words or more, mostly letters, not introducing an
    example (" >" at its end)."""
    if not is_text(line) or line.endswith(">") or len(line.split()) < 5:
        return False
    return sum(c.isalpha() or c == " " for c in line) >= 0.75 * len(line)


def paragraphs(path):
    """Maximal runs of consecutive text lines, a line ending with ">" (which introduces an example)
    closing its paragraph: (file name, first line number, lines)."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out, run, start = [], [], 0
    for number, line in enumerate(lines + [""], 1):
        if is_text(line):
            if not run:
                start = number
            run.append(line)
            if not line.endswith(">"):
                continue
        if run:
            out.append((name, start, run))
            run = []
    return out


def tail_lines(lines, limit):
    """The longest suffix of `lines` that, joined by newlines, fits in `limit` characters."""
    kept, size = [], -1
    for line in reversed(lines):
        if size + 1 + len(line) > limit:
            break
        kept.insert(0, line)
        size += 1 + len(line)
    return kept


def choice_items(paras, rng, count):
    all_lines = [(p, line) for p, (_, _, lines) in enumerate(paras) for line in lines if is_prose(line)]
    candidates = []
    for p, (name, start, lines) in enumerate(paras):
        for j in range(1, len(lines)):
            if not is_prose(lines[j]):
                continue
            context = tail_lines(lines[:j], MAX_CONTEXT)
            if context and sum(map(len, context)) >= 140:  # two lines or more
                candidates.append((p, j, context))
    rng.shuffle(candidates)
    # spread the items over the paragraphs: one per paragraph first, then a second, ...
    used, chosen = {}, []
    for round_ in range(1, 100):
        for p, j, context in candidates:
            if len(chosen) >= count:
                break
            if used.get(p, 0) == round_ - 1 and (p, j) not in {(c[0], c[1]) for c in chosen}:
                used[p] = round_
                chosen.append((p, j, context))
        if len(chosen) >= count:
            break
    chosen.sort(key=lambda c: (c[0], c[1]))
    items = []
    for p, j, context in chosen:
        true = paras[p][2][j]
        # distractors: lines of other paragraphs of about the same length (0.6x..1.6x), none equal
        pool = [line for q, line in all_lines
                if q != p and line != true and 0.6 * len(true) <= len(line) <= 1.6 * len(true)]
        distractors = rng.sample(sorted(set(pool)), 3)
        gold = rng.randrange(4)
        options = distractors[:gold] + [true] + distractors[gold:]
        items.append({"context": "\n".join(context), "choices": ["\n" + o for o in options], "gold": gold})
    return items


def cloze_items(paras, rng, count):
    """Passages ending with a word of at least four letters, not a function word, that already
    occurs in the passage (as LAMBADA's targets are predictable from the wider context), preceded by
    a space on its line and followed in the text by a space, the line's end or a punctuation mark."""
    candidates = []
    for p, (name, start, lines) in enumerate(paras):
        for i, line in enumerate(lines):
            for m in re.finditer(r"(?<= )([A-Za-z]{4,})(?=[.,;:!?]?(\s|$))", line):
                word = m.group(1)
                if word.lower() in FUNCTION_WORDS:
                    continue
                head = line[: m.start() - 1]  # without the space before the word
                before = tail_lines(lines[:i], MAX_CONTEXT - len(head) - 1)
                context = "\n".join(before + [head])
                if len(context) < 100 or len(context) > MAX_CONTEXT:
                    continue
                if not re.search(r"\b" + re.escape(word) + r"\b", context, re.IGNORECASE):
                    continue
                candidates.append((p, i, m.start(), context, word))
    rng.shuffle(candidates)
    used, chosen = set(), []
    for c in candidates:  # at most one item per paragraph while there are enough paragraphs
        if c[0] not in used and len(chosen) < count:
            used.add(c[0])
            chosen.append(c)
    for c in candidates:
        if len(chosen) >= count:
            break
        if c not in chosen:
            chosen.append(c)
    chosen.sort(key=lambda c: (c[0], c[1], c[2]))
    return [{"context": c[3], "continuation": " " + c[4]} for c in chosen]


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=os.path.join(root, "data", "corpus", "vim-doc"))
    p.add_argument("--out", default=os.path.join(root, "data", "tasks"))
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--seed", type=int, default=20240611)
    opts = p.parse_args(argv)
    files = sorted(f for f in glob.glob(os.path.join(opts.corpus, "*.txt")) if HELD_OUT.search(f))
    if not files:
        sys.exit(f"no held-out files usr_4[0-9].txt in {opts.corpus}")
    paras = [para for f in files for para in paragraphs(f)]
    choice = choice_items(paras, random.Random(opts.seed), opts.items)
    cloze = cloze_items(paras, random.Random(opts.seed + 1), opts.items)
    os.makedirs(opts.out, exist_ok=True)
    for name, items in (("vimdoc-choice.jsonl", choice), ("vimdoc-cloze.jsonl", cloze)):
        path = os.path.join(opts.out, name)
        with open(path, "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        print(f"{path}: {len(items)} items from {len(files)} held-out files ({len(paras)} prose paragraphs)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
