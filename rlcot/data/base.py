"""Shared base of rlcot's TFDS builders: array_record output, local sources first, opt-in download.

Why this works without TensorFlow: TFDS 4.9 serialises examples with its own copy of the
`tf.train.Example` protos (`tensorflow_datasets.proto`), writes array_record files through the
`array_record` package and parses them back with a numpy parser (`ExampleParserNp`), so
`download_and_prepare()` and `as_data_source()` never import TensorFlow as long as the
file format is array_record, the features are plain (`Text`, scalars) and nothing asks for a
`tf.data.Dataset`. The TensorFlow-bound pieces are TFDS's archive extractor and its
non-HTTP copies (both `tf.io.gfile`), so builders only call `dl_manager.download` on
https URLs (plain `requests`) and read archives with the standard library. Text features
come back from a data source as bytes: `decode_example` turns them into str.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from etils import epath

ENV_SOURCE_DIR = "RLCOT_SHARED_DATA"

# Every rlcot example has these string fields; builders add task-specific ones.
COMMON_FIELDS = ("id", "question", "answer", "solution", "task")

FILE_FORMAT = "array_record"


def resolve_source_dir(source_dir: str | os.PathLike | None = None) -> Path | None:
    """Where raw benchmark files live: the argument, else $RLCOT_SHARED_DATA, else None."""
    if source_dir is None:
        source_dir = os.environ.get(ENV_SOURCE_DIR) or None
    return None if source_dir is None else Path(source_dir).expanduser()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {e}") from e
    return rows


def require_fields(row: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}; the row has {sorted(row)}")


def decode_example(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record read from a TFDS data source with bytes turned back into str."""
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}


class RlcotBuilder(tfds.core.GeneratorBasedBuilder):
    """Base builder: string features, source order kept, array_record only.

    `source_dir` is the root of the raw files (layout as in /work/shared/data, e.g.
    `gsm8k/train.jsonl`); `download=True` lets a builder fetch a file that is not there.
    Downloading is opt-in so that tests and default runs never touch the network.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    EXTRA_FIELDS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""

    def __init__(
        self,
        *,
        source_dir: str | os.PathLike | None = None,
        download: bool = False,
        file_format: str | None = None,
        **kwargs: Any,
    ):
        if file_format not in (None, FILE_FORMAT):
            raise ValueError(
                f"{type(self).__name__} writes only {FILE_FORMAT!r} (read without TensorFlow), "
                f"got file_format={file_format!r}")
        # Set before super().__init__, which already builds the DatasetInfo.
        self._source_dir = resolve_source_dir(source_dir)
        self._download = bool(download)
        super().__init__(file_format=FILE_FORMAT, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup goes through `importlib_resources` (not installed, and not needed
        # for a module on disk); this is the same file it falls back to.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        names = COMMON_FIELDS + self.EXTRA_FIELDS
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({n: tfds.features.Text() for n in names}),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            # Row i of a split is row i of the source file: ids and indices line up, and
            # shuffling is the input pipeline's job (seeded, checkpointable).
            disable_shuffling=True,
        )

    def _local_file(self, *relpaths: str) -> Path | None:
        """The first of `relpaths` that exists under the source directory, if any."""
        if self._source_dir is None:
            return None
        for rel in relpaths:
            path = self._source_dir / rel
            if path.exists():
                return path
        return None

    def _fetch(self, dl_manager: tfds.download.DownloadManager, relpaths: Sequence[str],
               url: str | None) -> Path:
        """A local source file, else (only with download=True) the file at `url`."""
        path = self._local_file(*relpaths)
        if path is not None:
            return path
        tried = [str(self._source_dir / r) for r in relpaths] if self._source_dir else []
        if not self._download or url is None:
            how = (f"pass download=True to fetch {url}" if url
                   else "this source has no download URL")
            raise FileNotFoundError(
                f"{self.name}: no source file; looked for {tried or relpaths} "
                f"(source_dir={self._source_dir}, env {ENV_SOURCE_DIR}="
                f"{os.environ.get(ENV_SOURCE_DIR)!r}). Give source_dir, or {how}.")
        return Path(os.fspath(dl_manager.download(url)))

    def _generate_examples(self, rows: Sequence[Mapping[str, Any]]
                           ) -> Iterator[tuple[int, dict[str, str]]]:
        """Keys are row numbers, so the written order is the source order."""
        names = COMMON_FIELDS + self.EXTRA_FIELDS
        for i, ex in enumerate(rows):
            if set(ex) != set(names):
                raise ValueError(
                    f"{self.name}: example {i} has fields {sorted(ex)}, expected {sorted(names)}")
            bad = {k: type(v).__name__ for k, v in ex.items() if not isinstance(v, str)}
            if bad:
                raise TypeError(f"{self.name}: example {i} has non-string fields {bad}")
            yield i, dict(ex)
