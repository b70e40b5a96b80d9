"""TFDS builders for the math benchmarks: GSM8K, MATH (full and MATH-500), AIME 2024, AMC 2023."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rlcot.data.base import RlcotBuilder, read_jsonl, require_fields

GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/master/"
             "grade_school_math/data/{split}.jsonl")
MATH_TAR_URL = "https://people.eecs.berkeley.edu/~hendrycks/MATH.tar"
MATH500_URL = "https://raw.githubusercontent.com/openai/prm800k/main/prm800k/math_splits/test.jsonl"
AIME24_URL = ("https://huggingface.co/datasets/math-ai/aime24/resolve/main/"
              "test-00000-of-00001.parquet")
AMC23_URL = ("https://huggingface.co/datasets/math-ai/amc23/resolve/main/"
             "test-00000-of-00001.parquet")

_INT_RE = re.compile(r"[-+]?\d+")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?")
_CALC_RE = re.compile(r"<<[^>]*>>")


def normalize_number(value: Any) -> str:
    """Gold numbers as canonical strings: '1,080' -> '1080', '025' -> '25', 27.0 -> '27'.

    Anything that is not a plain number is returned stripped but otherwise unchanged.
    """
    if isinstance(value, bool):
        raise TypeError(f"expected a number or string, got bool {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    plain = text.replace(",", "")
    if _INT_RE.fullmatch(plain):
        return str(int(plain))
    if _FLOAT_RE.fullmatch(plain):
        return normalize_number(float(plain))
    return text


def gsm8k_split_answer(answer_text: str) -> tuple[str, str]:
    """(worked solution without calculator annotations, gold final answer) of a GSM8K answer."""
    if answer_text.count("####") != 1:
        raise ValueError(f"GSM8K answer must contain exactly one '####': {answer_text!r}")
    body, final = answer_text.split("####")
    return _CALC_RE.sub("", body).strip(), normalize_number(final)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} in `text` (braces balanced), or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    if text.startswith("\\boxed ", start):  # "\boxed 5" form, ends at "$" or end of text
        return text[start + len("\\boxed "):].split("$")[0].strip()
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    return None


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .parquet file (parquet through pyarrow, a TFDS dependency)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
        return pq.read_table(path).to_pylist()
    return read_jsonl(path)


class RlcotGsm8k(RlcotBuilder):
    """GSM8K (Cobbe et al. 2021): grade-school word problems; 7,473 train / 1,319 test."""

    name = "rlcot_gsm8k"
    DESCRIPTION = "GSM8K; answer = text after '####' without thousands separators."
    HOMEPAGE = "https://github.com/openai/grade-school-math"

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(self._rows(dl_manager, split))
                for split in ("train", "test")}

    def _rows(self, dl_manager, split: str) -> list[dict[str, str]]:
        path = self._fetch(dl_manager, [f"gsm8k/{split}.jsonl"], GSM8K_URL.format(split=split))
        out = []
        for i, row in enumerate(read_jsonl(path)):
            require_fields(row, ("question", "answer"), f"{path} row {i}")
            solution, answer = gsm8k_split_answer(row["answer"])
            out.append({"id": f"gsm8k/{split}/{i}", "question": row["question"].strip(),
                        "answer": answer, "solution": solution, "task": "gsm8k"})
        return out


class RlcotMathConfig(tfds.core.BuilderConfig):
    """`full`: MATH train/test (7,500 / 5,000); `math500`: the 500-problem test subset."""


def _math_level(level: Any) -> str:
    # MATH files say "Level 5" (a few "Level ?"); MATH-500 says 5.
    return str(level).removeprefix("Level ").strip()


def _math_example(row: Mapping[str, Any], uid: str, where: str) -> dict[str, str]:
    require_fields(row, ("problem", "solution"), where)
    answer = row.get("answer")
    if answer is None:
        answer = last_boxed(row["solution"])
        if answer is None:
            raise ValueError(f"{where}: no 'answer' field and no \\boxed{{}} in the solution")
    return {"id": uid, "question": row["problem"].strip(), "answer": str(answer).strip(),
            "solution": row["solution"].strip(), "task": "math",
            "subject": str(row.get("subject", row.get("type", ""))),
            "level": _math_level(row.get("level", ""))}


class RlcotMath(RlcotBuilder):
    """MATH (Hendrycks et al. 2021). Gold answer = the given `answer`, else the last \\boxed{}.

    Sources for `full`, tried in order under `source_dir`: `math/{train,test}.jsonl` (rows with
    problem, solution, optional answer/subject/level/unique_id), the extracted archive
    `math/MATH/{split}/{subject}/{n}.json` or `MATH/...`, the archive `math/MATH.tar` or
    `MATH.tar`; with download=True the archive from the authors' site. MATH-500 is a subset of
    the MATH test split, so training on `full` train and evaluating on `math500` is clean.
    """

    name = "rlcot_math"
    EXTRA_FIELDS = ("subject", "level")
    BUILDER_CONFIGS = [RlcotMathConfig(name="full", description="MATH train/test."),
                       RlcotMathConfig(name="math500", description="MATH-500 test subset.")]
    DEFAULT_CONFIG_NAME = "math500"
    HOMEPAGE = "https://github.com/hendrycks/math"
    DESCRIPTION = "MATH competition problems with worked solutions."

    def _split_generators(self, dl_manager):
        if self.builder_config.name == "math500":
            path = self._fetch(dl_manager, ["math500/test.jsonl"], MATH500_URL)
            rows = [_math_example(r, str(r.get("unique_id", f"math500/{i}")), f"{path} row {i}")
                    for i, r in enumerate(read_jsonl(path))]
            return {"test": self._generate_examples(rows)}
        return {split: self._generate_examples(self._full_rows(dl_manager, split))
                for split in ("train", "test")}

    def _full_rows(self, dl_manager, split: str) -> list[dict[str, str]]:
        jsonl = self._local_file(f"math/{split}.jsonl")
        if jsonl is not None:
            return [_math_example(r, str(r.get("unique_id", f"{split}/{i}")), f"{jsonl} row {i}")
                    for i, r in enumerate(read_jsonl(jsonl))]
        tree = self._local_file("math/MATH", "MATH")
        if tree is not None:
            files = ((p.relative_to(tree).as_posix(), p.read_text(encoding="utf-8"))
                     for p in (tree / split).glob("*/*.json"))
            return _math_tree_rows(files, split, str(tree))
        archive = self._fetch(dl_manager, ["math/MATH.tar", "MATH.tar"], MATH_TAR_URL)
        return _math_tree_rows(_iter_tar_json(archive, split), split, str(archive))


def _iter_tar_json(archive: Path, split: str) -> Iterator[tuple[str, str]]:
    """(path below MATH/, text) of the split's problem files; read in place, no extraction."""
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == split \
                    and parts[3].endswith(".json"):
                yield "/".join(parts[1:]), tar.extractfile(member).read().decode("utf-8")


def _math_tree_rows(files, split: str, where: str) -> list[dict[str, str]]:
    """Examples from (`split/subject/n.json`, text) pairs, sorted by subject then problem number."""
    def order(item):
        _, subject, fname = item[0].split("/")
        stem = fname.removesuffix(".json")
        return subject, int(stem) if stem.isdigit() else 0, stem
    rows = [_math_example(json.loads(text), rel, f"{where}:{rel}")
            for rel, text in sorted(files, key=order)]
    if not rows:
        raise FileNotFoundError(f"{where}: no '{split}/<subject>/<n>.json' files found")
    return rows


class RlcotAime24(RlcotBuilder):
    """AIME 2024 I and II: 30 problems; answers are integers 0..999 ('025' -> '25')."""

    name = "rlcot_aime24"
    DESCRIPTION = "AIME 2024 problems (I and II)."
    HOMEPAGE = "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I"

    def _split_generators(self, dl_manager):
        path = self._fetch(dl_manager, ["aime24/test.jsonl"], AIME24_URL)
        rows = []
        for i, r in enumerate(_read_table(path)):
            require_fields(r, ("id", "answer"), f"{path} row {i}")
            rows.append({"id": f"aime24/{r['id']}",
                         "question": _problem_text(r, f"{path} row {i}"),
                         "answer": normalize_number(r["answer"]),
                         "solution": (r.get("solution") or "").strip(), "task": "aime24"})
        return {"test": self._generate_examples(rows)}


def _problem_text(row: Mapping[str, Any], where: str) -> str:
    # Mirrors of these sets name the statement 'problem' or 'question'.
    text = row.get("problem", row.get("question"))
    if not isinstance(text, str):
        raise ValueError(f"{where}: neither 'problem' nor 'question' holds the statement")
    return text.strip()


class RlcotAmc23(RlcotBuilder):
    """AMC 2023 (12A and 12B): 40 problems with numeric answers (27.0 -> '27')."""

    name = "rlcot_amc23"
    DESCRIPTION = "AMC 2023 problems with numeric answers."
    HOMEPAGE = "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems"

    def _split_generators(self, dl_manager):
        path = self._fetch(dl_manager, ["amc23/test.jsonl"], AMC23_URL)
        rows = []
        for i, r in enumerate(_read_table(path)):
            require_fields(r, ("id", "answer"), f"{path} row {i}")
            rows.append({"id": f"amc23/{r['id']}",
                         "question": _problem_text(r, f"{path} row {i}"),
                         "answer": normalize_number(r["answer"]), "solution": "",
                         "task": "amc23"})
        return {"test": self._generate_examples(rows)}
