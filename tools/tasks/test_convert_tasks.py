#!/usr/bin/env python3
"""Self-test of convert_tasks.py on handwritten documents (stdlib unittest):

    python3 tools/tasks/test_convert_tasks.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_tasks  # noqa: E402


class Opts:
    limit = 0
    single_context = False


def one(task, doc, **kw):
    opts = Opts()
    for k, v in kw.items():
        setattr(opts, k, v)
    return convert_tasks.TASKS[task][0](doc, opts)


class TestTasks(unittest.TestCase):
    def test_piqa(self):
        doc = {"goal": "How do I ready a guinea pig cage for it's new occupants?",
               "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
               "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material.",
               "label": 0}
        self.assertEqual(one("piqa", doc), {
            "context": "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
            "choices": [" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
                        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material."],
            "gold": 0})
        with self.assertRaises(convert_tasks.Skip):
            one("piqa", dict(doc, label=-1))

    def test_arc(self):
        doc = {"id": "Mercury_7175875",
               "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
                           "Which is the most likely effect of this increase in rotation?",
               "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                                    "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                           "label": ["A", "B", "C", "D"]},
               "answerKey": "C"}
        item = one("arc_challenge", doc)
        self.assertEqual(item["context"], "Question: An astronomer observes that a planet rotates faster after a "
                         "meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:")
        self.assertEqual(item["choices"][2], " Planetary days will become shorter.")
        self.assertEqual(item["gold"], 2)
        # numeric labels and three choices (both occur in ARC)
        doc = {"question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]},
               "answerKey": "2"}
        self.assertEqual(one("arc_easy", doc),
                         {"context": "Question: Which is a gas?\nAnswer:", "choices": [" ice", " steam", " rock"], "gold": 1})

    def test_hellaswag(self):
        doc = {"ind": 24, "activity_label": "Roof shingle removal",
               "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
               "ctx": "A man is sitting on a roof. he",
               "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                           "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
               "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "zeroshot", "label": "3"}
        self.assertEqual(one("hellaswag", doc), {
            "context": "Roof shingle removal: A man is sitting on a roof. He",
            "choices": [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                        " is holding a rubik's cube.", " starts pulling up roofing on a roof."],
            "gold": 3})
        # WikiHow artifacts, capitalize() lowering the rest of ctx_b, an empty ctx_b
        doc = {"activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Heat the grill.",
               "ctx_b": "THEN scrub it", "endings": ["[step] With a brush.", "  twice "], "label": 0}
        self.assertEqual(one("hellaswag", doc), {
            "context": "Home and Garden: How to clean a grill. Heat the grill. Then scrub it",
            "choices": ["  With a brush.", " twice"], "gold": 0})
        doc = {"activity_label": "Tennis", "ctx_a": "A woman serves.", "ctx_b": "", "endings": ["a", "b"], "label": 1}
        self.assertEqual(one("hellaswag", doc)["context"], "Tennis: A woman serves.")
        with self.assertRaises(convert_tasks.Skip):
            one("hellaswag", dict(doc, label=""))

    def test_lambada(self):
        doc = {"text": "In my palm is a clear stone, and inside it is a small ivory statuette. "
                       "A guardian angel.\n\n\"Figured if you're going to be out at night getting hit by cars, "
                       "you might as well have some backup.\"\n\nI look at him, feeling stunned. Like this is "
                       "some sort of sign. But as I stare at Harlin, his mouth curved in a confident grin, I don't "
                       "care about signs"}
        item = one("lambada_openai", doc)
        self.assertEqual(item["continuation"], " signs")
        self.assertTrue(item["context"].endswith("I don't care about"))
        self.assertEqual(item["context"] + item["continuation"], doc["text"])
        # split(' ') only: a newline does not separate the last word
        self.assertEqual(one("lambada", {"text": "one two\nthree"}), {"context": "one", "continuation": " two\nthree"})

    def test_logiqa(self):
        doc = {"label": "c", "context": "All cats are animals.", "question": "Which follows?",
               "options": ["Some animals are dogs.", "No cat is an animal.", "Some animals are cats.", "Cats bark."]}
        self.assertEqual(one("logiqa", doc), {
            "context": "Passage: All cats are animals.\nQuestion: Which follows?\nChoices:\n"
                       "A. Some animals are dogs.\nB. No cat is an animal.\nC. Some animals are cats.\nD. Cats bark.\n"
                       "Answer:",
            "choices": [" Some animals are dogs.", " No cat is an animal.", " Some animals are cats.", " Cats bark."],
            "gold": 2})
        self.assertEqual(one("logiqa", dict(doc, label=" a "))["gold"], 0)

    def test_winogrande(self):
        doc = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
               "option1": "Sarah", "option2": "Maria", "answer": "1"}
        self.assertEqual(one("winogrande", doc, single_context=True), {
            "context": "Sarah was a much better surgeon than Maria so ",
            "choices": ["Sarah always got the harder cases.", "Maria always got the harder cases."],
            "gold": 0})
        self.assertEqual(one("winogrande", doc), {
            "contexts": ["Sarah was a much better surgeon than Maria so Sarah",
                         "Sarah was a much better surgeon than Maria so Maria"],
            "continuation": " always got the harder cases.",
            "gold": 0})
        # the blank at the end of a word ("_'s")
        doc = {"sentence": "The cat chased the mouse until _'s legs were tired.", "option1": "cat", "option2": "mouse",
               "answer": "2"}
        self.assertEqual(one("winogrande", doc)["continuation"], " 's legs were tired.")
        self.assertEqual(one("winogrande", doc, single_context=True)["choices"], ["cat 's legs were tired.", "mouse 's legs were tired."])
        self.assertEqual(one("winogrande", doc)["gold"], 1)
        with self.assertRaises(convert_tasks.Skip):
            one("winogrande", dict(doc, answer=""))

    def test_wsc_superglue(self):
        doc = {"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have "
                       "been more truthful.",
               "span1_index": 0, "span2_index": 13, "span1_text": "Mark", "span2_text": "He", "idx": 0, "label": 1}
        self.assertEqual(one("wsc", doc), {
            "context": "Passage: Mark told Pete many lies about himself, which Pete included in his book. *He* should "
                       "have been more truthful.\n"
                       "Question: In the passage above, does the pronoun \"*He*\" refer to \"*Mark*\"?\nAnswer:",
            "choices": [" no", " yes"], "gold": 1})
        # the original SuperGLUE jsonl: spans under "target", label a bool; general_detokenize
        raw = {"text": "The dog ate it , and it wasn't hungry .", "label": False,
               "target": {"span1_index": 1, "span2_index": 6, "span1_text": "dog", "span2_text": "it"}}
        self.assertEqual(one("wsc", raw)["context"].split("\n")[0],
                         "Passage: The dog ate it, and *it* wasn't hungry.")
        self.assertEqual(one("wsc", raw)["gold"], 0)

    def test_wsc273(self):
        doc = {"text": "The city councilmen refused the demonstrators a permit because they feared violence.",
               "pronoun": "they", "pronoun_loc": 63, "quote": "they feared violence", "quote_loc": 63,
               "options": ["The city councilmen", "The demonstrators"], "label": 0, "source": "(Winograd 1972)"}
        self.assertEqual(one("wsc273", doc, single_context=True), {
            "context": "The city councilmen refused the demonstrators a permit because ",
            # the harness's continuation is " " + text[loc + len(pronoun):], which starts with a space too
            "choices": ["the city councilmen  feared violence.", "the demonstrators  feared violence."],
            "gold": 0})
        # possessive pronoun: 's appended; start of sentence keeps the capital
        doc = {"text": "Joe paid the detective. His report was late.", "pronoun": "His", "pronoun_loc": 24,
               "options": ["Joe", "The detective"], "label": 1}
        self.assertEqual(one("wsc273", doc), {
            "contexts": ["Joe paid the detective. Joe's", "Joe paid the detective. The detective's"],
            "continuation": "  report was late.", "gold": 1})


class TestCommandLine(unittest.TestCase):
    def run_tool(self, *args):
        return subprocess.run([sys.executable, os.path.join(HERE, "convert_tasks.py"), *args],
                              capture_output=True, text=True)

    def test_jsonl_and_json_array(self):
        docs = [{"goal": "g1", "sol1": "a", "sol2": "b", "label": 1},
                {"goal": "g2", "sol1": "c", "sol2": "d", "label": -1},
                {"goal": "g3", "sol1": "e", "sol2": "f", "label": 0}]
        with tempfile.TemporaryDirectory() as d:
            src, arr, out = (os.path.join(d, n) for n in ("piqa.jsonl", "piqa.json", "out.jsonl"))
            with open(src, "w") as f:
                f.write("".join(json.dumps(x) + "\n" for x in docs) + "\n")
            with open(arr, "w") as f:
                json.dump(docs, f)
            for path in (src, arr):
                r = self.run_tool("piqa", path, out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("1 unlabelled", r.stderr)
                with open(out) as f:
                    lines = [json.loads(x) for x in f]
                self.assertEqual(lines, [
                    {"context": "Question: g1\nAnswer:", "choices": [" a", " b"], "gold": 1},
                    {"context": "Question: g3\nAnswer:", "choices": [" e", " f"], "gold": 0}])
            r = self.run_tool("piqa", src, out, "--limit", "1")
            with open(out) as f:
                self.assertEqual(len(f.readlines()), 1)

    def test_parquet(self):
        try:
            import pyarrow
            import pyarrow.parquet as pq
        except ImportError:
            self.skipTest("pyarrow is not installed")
        table = pyarrow.table({
            "question": ["Which is a gas?"],
            "choices": [{"text": ["ice", "steam"], "label": ["A", "B"]}],
            "answerKey": ["B"]})
        with tempfile.TemporaryDirectory() as d:
            src, out = os.path.join(d, "arc.parquet"), os.path.join(d, "out.jsonl")
            pq.write_table(table, src)
            r = self.run_tool("arc_easy", src, out)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out) as f:
                self.assertEqual(json.loads(f.read()), {"context": "Question: Which is a gas?\nAnswer:",
                                                        "choices": [" ice", " steam"], "gold": 1})

    def test_missing_field(self):
        with tempfile.TemporaryDirectory() as d:
            src, out = os.path.join(d, "x.jsonl"), os.path.join(d, "out.jsonl")
            with open(src, "w") as f:
                f.write('{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}\n')
            r = self.run_tool("winogrande", src, out)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("document 1", r.stderr)


if __name__ == "__main__":
    unittest.main()
