#!/usr/bin/env python3
"""Convert Hugging Face dataset exports of standard zero-shot benchmarks into task files
for `dijiang eval-tasks`.

    python3 tools/tasks/convert_tasks.py TASK INPUT_FILE OUTPUT.jsonl [--limit N] [--single-context]
    python3 tools/tasks/convert_tasks.py --list

TASK is one of: piqa, arc_easy, arc_challenge, hellaswag, winogrande, lambada_openai, logiqa,
wsc (SuperGLUE WSC, the yes/no prompt), wsc273 (the Winograd Schema Challenge, partial scoring).

INPUT_FILE is a local export of the split lm-evaluation-harness evaluates (see README.md): JSON
lines (`.jsonl`, `.json` holding JSON lines or one JSON array, optionally `.gz`) or, when pyarrow
(or pandas) can be imported, `.parquet`. Nothing is downloaded.

Every output line is one item:
  multiple choice  {"context": "...", "choices": [" ...", " ..."], "gold": 1}
  cloze            {"context": "...", "continuation": " word"}
The context is lm-evaluation-harness's `doc_to_text` of the document, each choice is
`target_delimiter + choice` (the delimiter is " " for every task here), and gold is the index of
the correct choice. WinoGrande and WSC273 are "partial evaluation" tasks in the harness (the
context differs per choice, the continuation is shared): they are written as the harness's exact
requests, {"contexts": [...], "continuation": "...", "gold": g} (multiple-context items, which
eval-tasks scores as the harness does), or with --single-context as an approximation in the
one-context format (see README.md).

Standard library only (pyarrow or pandas optional, for parquet).
"""

import argparse
import gzip
import io
import json
import re
import sys

TARGET_DELIMITER = " "  # lm-eval TaskConfig.target_delimiter default; no task below overrides it


class Skip(Exception):
    """A document that the harness would not score (e.g. an unlabelled test-split row)."""


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------

def _plain(value):
    """numpy / pyarrow scalars and arrays (from a parquet reader) as plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_records(path):
    """The documents of a local dataset export, as a list of dicts."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq  # optional
            return [_plain(r) for r in pq.read_table(path).to_pylist()]
        except ImportError:
            pass
        try:
            import pandas as pd  # optional
            return [_plain(r) for r in pd.read_parquet(path).to_dict(orient="records")]
        except ImportError:
            sys.exit(f"{path}: reading parquet needs pyarrow or pandas; export the split as JSON lines instead")
    opener = gzip.open if lower.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        if not isinstance(data, list):
            sys.exit(f"{path}: expected a JSON array of objects")
        return data
    records = []
    for number, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            sys.exit(f"{path}:{number}: not JSON: {e}")
    return records


def _field(doc, name, task):
    if name not in doc:
        raise KeyError(f"{task}: the document has no field {name!r} (fields: {sorted(doc)})")
    return doc[name]


def mc(context, choices, gold):
    choices = list(choices)
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold {gold} is not an index of the {len(choices)} choices")
    return {"context": context, "choices": [TARGET_DELIMITER + c for c in choices], "gold": gold}


# ---------------------------------------------------------------------------------------------
# tasks: each follows lm-evaluation-harness's lm_eval/tasks/<task> definition
# ---------------------------------------------------------------------------------------------

def piqa(doc, opts):
    # piqa/piqa.yaml: doc_to_text "Question: {{goal}}\nAnswer:", doc_to_choice [sol1, sol2],
    # doc_to_target label (validation split)
    label = doc.get("label")
    if label is None or label == "" or int(label) < 0:
        raise Skip("no label")
    return mc("Question: " + _field(doc, "goal", "piqa") + "\nAnswer:", [doc["sol1"], doc["sol2"]], int(label))


def arc(doc, opts):
    # arc/arc_easy.yaml (arc_challenge.yaml includes it): doc_to_text "Question: {{question}}\nAnswer:",
    # doc_to_choice choices.text, doc_to_target choices.label.index(answerKey) (test split)
    choices = _field(doc, "choices", "arc")
    key = _field(doc, "answerKey", "arc")
    labels = list(choices["label"])
    if key not in labels:
        raise Skip(f"answerKey {key!r} is not one of the labels {labels}")
    return mc("Question: " + doc["question"] + "\nAnswer:", choices["text"], labels.index(key))


def _hellaswag_preprocess(text):
    # hellaswag/utils.py preprocess
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag(doc, opts):
    # hellaswag/utils.py process_docs: query = preprocess(activity_label + ": " + ctx_a + " " +
    # ctx_b.capitalize()), choices = [preprocess(e) for e in endings], gold = int(label);
    # hellaswag.yaml: doc_to_text query, doc_to_choice choices (validation split)
    label = doc.get("label")
    if label is None or str(label).strip() == "":
        raise Skip("no label")
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return mc(query, [_hellaswag_preprocess(e) for e in doc["endings"]], int(label))


def lambada_openai(doc, opts):
    # lambada/lambada_openai.yaml (output_type loglikelihood, test split):
    # doc_to_text "{{text.split(' ')[:-1]|join(' ')}}", doc_to_target "{{' '+text.split(' ')[-1]}}"
    words = _field(doc, "text", "lambada").split(" ")
    return {"context": " ".join(words[:-1]), "continuation": " " + words[-1]}


def logiqa(doc, opts):
    # logiqa/utils_logiqa.py doc_to_text / doc_to_target; logiqa.yaml doc_to_choice options (test split)
    letters = ["a", "b", "c", "d"]
    prompt = "Passage: " + doc["context"] + "\n"
    prompt += "Question: " + doc["question"] + "\nChoices:\n"
    for letter, option in zip(letters, doc["options"]):
        prompt += f"{letter.upper()}. {option}\n"
    prompt += "Answer:"
    return mc(prompt, doc["options"], letters.index(str(doc["label"]).strip()))


def _general_detokenize(string):
    # lm_eval/utils.py general_detokenize
    string = string.replace(" n't", "n't")
    string = string.replace(" )", ")")
    string = string.replace("( ", "(")
    string = string.replace('" ', '"')
    string = string.replace(' "', '"')
    string = re.sub(r" (['.,])", r"\1", string)
    return string


def wsc(doc, opts):
    # super_glue/wsc/default.yaml + preprocess_wsc.py default_doc_to_text (dataset wsc.fixed,
    # validation split): doc_to_choice ['no', 'yes'], doc_to_target label.
    # The original SuperGLUE jsonl nests the spans under "target"; HF flattens them.
    span = doc.get("target", doc)
    raw_passage = doc["text"]
    # HF span indices are word-based, not character-based
    pre = " ".join(raw_passage.split()[: span["span2_index"]])
    post = raw_passage[len(pre) + len(span["span2_text"]) + 1:]
    passage = _general_detokenize(pre + " *{}*".format(span["span2_text"]) + post)
    noun = span["span1_text"]
    pronoun = span["span2_text"]
    text = (
        f"Passage: {passage}\n"
        + f'Question: In the passage above, does the pronoun "*{pronoun}*" refer to "*{noun}*"?\n'
        + "Answer:"
    )
    label = doc.get("label")
    if label is None or label == -1:
        raise Skip("no label")
    return mc(text, ["no", "yes"], int(label))


def _partial(prefix, options, target, gold, opts):
    """A partial-evaluation document: the harness scores `TARGET_DELIMITER + target` after each of
    the contexts `prefix + option`, and takes the argmax (acc only)."""
    continuation = TARGET_DELIMITER + target
    if not 0 <= gold < len(options):
        raise ValueError(f"gold {gold} is not an index of the {len(options)} options")
    if not opts.single_context:
        return {"contexts": [prefix + o for o in options], "continuation": continuation, "gold": gold}
    # Approximation in the one-context format: the shared text before the blank is the context and
    # each choice is the option followed by the shared continuation. The text scored is the
    # harness's context + continuation exactly, but the option's own tokens are scored too.
    return {"context": prefix, "choices": [o + continuation for o in options], "gold": gold}


def winogrande(doc, opts):
    # winogrande/default.yaml + preprocess_winogrande.py (winogrande_xl, validation split):
    # doc_to_text -> gold index (answer "1"/"2" -> 0/1, an int: "multiple inputs"),
    # doc_to_choice -> [sentence[:idx] + option1, sentence[:idx] + option2] (the contexts),
    # doc_to_target -> sentence[idx + 1:].strip() (the shared continuation), idx = sentence.index("_")
    answer = str(doc.get("answer", "")).strip()
    if answer not in ("1", "2"):
        raise Skip("no answer")
    sentence = doc["sentence"]
    idx = sentence.index("_")
    return _partial(sentence[:idx], [doc["option1"], doc["option2"]], sentence[idx + 1:].strip(),
                    {"1": 0, "2": 1}[answer], opts)


_UPPER_PRONOUNS = ["A", "An", "The", "She", "He", "It", "They", "My", "His", "Her", "Their"]


def _wsc273_normalize_option(doc, option):
    # wsc273/utils.py __normalize_option
    if doc["pronoun"].lower() in ["my", "his", "her", "our", "their"]:
        option += "'s"
    pronoun = option.split()[0]
    start_of_sentence = doc["text"][doc["pronoun_loc"] - 2] == "."
    if not start_of_sentence and pronoun in _UPPER_PRONOUNS:
        return option.replace(pronoun, pronoun.lower())
    return option


def wsc273(doc, opts):
    # wsc273/default.yaml + utils.py process_doc (lighteval/winograd_wsc, config wsc273, test split):
    # text = text.replace("  ", " ") (pronoun_loc is not adjusted, as in the harness), options
    # normalized; doc_to_text label (an int: multiple inputs); doc_to_choice
    # [text[:pronoun_loc] + options[k]]; doc_to_target text[pronoun_loc + len(pronoun):]
    doc = dict(doc)
    doc["text"] = doc["text"].replace("  ", " ")
    options = [_wsc273_normalize_option(doc, o) for o in doc["options"]]
    loc = int(doc["pronoun_loc"])
    target = doc["text"][loc + len(doc["pronoun"]):]
    return _partial(doc["text"][:loc], options, target, int(doc["label"]), opts)


TASKS = {
    "piqa": (piqa, "PIQA, validation split (HF baber/piqa or ybisk/piqa: goal, sol1, sol2, label)"),
    "arc_easy": (arc, "ARC-Easy, test split (HF allenai/ai2_arc ARC-Easy: question, choices{text,label}, answerKey)"),
    "arc_challenge": (arc, "ARC-Challenge, test split (HF allenai/ai2_arc ARC-Challenge)"),
    "hellaswag": (hellaswag, "HellaSwag, validation split (HF Rowan/hellaswag: activity_label, ctx_a, ctx_b, endings, label)"),
    "winogrande": (winogrande, "WinoGrande, validation split (HF allenai/winogrande winogrande_xl: sentence, option1, option2, answer)"),
    "lambada_openai": (lambada_openai, "LAMBADA (OpenAI), test split (HF EleutherAI/lambada_openai default: text)"),
    "logiqa": (logiqa, "LogiQA, test split (HF EleutherAI/logiqa: context, question, options, label a-d)"),
    "wsc": (wsc, "SuperGLUE WSC, validation split (HF super_glue wsc.fixed: text, span1/2_index, span1/2_text, label)"),
    "wsc273": (wsc273, "WSC273, test split (HF lighteval/winograd_wsc wsc273: text, pronoun, pronoun_loc, options, label)"),
}
TASKS["lambada"] = TASKS["lambada_openai"]


def convert(task, records, opts):
    """(items, skipped) for a list of documents."""
    fn = TASKS[task][0]
    items, skipped = [], 0
    for number, doc in enumerate(records, 1):
        try:
            items.append(fn(doc, opts))
        except Skip:
            skipped += 1
            continue
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise SystemExit(f"{task}: document {number}: {e}")
        if opts.limit and len(items) >= opts.limit:
            break
    return items, skipped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", nargs="?", choices=sorted(TASKS), metavar="TASK")
    p.add_argument("input", nargs="?", metavar="INPUT_FILE")
    p.add_argument("output", nargs="?", metavar="OUTPUT.jsonl")
    p.add_argument("--limit", type=int, default=0, help="write at most N items")
    p.add_argument("--single-context", action="store_true",
                   help="winogrande / wsc273: instead of the harness's exact requests (one context per "
                        "option, the shared continuation scored), write one context and full choices "
                        "(an approximation; see README.md)")
    p.add_argument("--list", action="store_true", help="list the tasks and the splits they expect")
    opts = p.parse_args(argv)
    if opts.list:
        for name in sorted(TASKS):
            print(f"{name:15s} {TASKS[name][1]}")
        return 0
    if not (opts.task and opts.input and opts.output):
        p.error("TASK, INPUT_FILE and OUTPUT.jsonl are required")
    items, skipped = convert(opts.task, read_records(opts.input), opts)
    with open(opts.output, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{opts.task}: wrote {len(items)} items to {opts.output}"
          + (f" ({skipped} unlabelled documents skipped)" if skipped else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
