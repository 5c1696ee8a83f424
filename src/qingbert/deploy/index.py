"""Semantic search: a corpus -> sentence vectors -> a faiss index folder, and queries against it.

``qingbert index build --model M --corpus FILE --out DIR [--factory Flat|HNSW32|IVF256,Flat|...]`` reads one text
per line, encodes every text with the model (normalised vectors, so inner product = cosine similarity), builds
``faiss.index_factory(dim, FACTORY, METRIC_INNER_PRODUCT)`` (trained first when the factory needs it) and writes

* ``index.faiss``: the index (``faiss.write_index``; no pickle), vector ids = the texts' ids;
* ``texts.jsonl``: one ``{"id", "line", "text"}`` record per indexed text (``line``: 1-based line in the corpus);
* ``manifest.json``: model folder, factory, count, dim, pooling, skipped (empty) lines, seconds.

``qingbert index query --index DIR --text Q [--k 5]`` prints the top hits as JSON lines.  From Python::

    from qingbert.index import build_index, load_index
    build_index("my-model", "corpus.txt", "my-index")
    hits = load_index("my-index").search(["今天天气很好"], k=5)   # [[{"id", "text", "score"}, ...]]

Every vector comes from :func:`embed`, the one place the model is asked for sentence vectors (the server uses it
too), so indexing and querying always pool the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from qingbert.data.corpus import JSONL_SUFFIXES, read_documents
from qingbert.deploy.inference import load
from qingbert.errors import QingbertError, require
from qingbert.manifest import INDEX_FORMAT, check_out_folder, read_manifest, replace_folder, write_manifest

FORMAT = INDEX_FORMAT
INDEX_FILE = "index.faiss"
TEXTS_FILE = "texts.jsonl"
POOLINGS = ("mean", "cls", "max", "mean-max")  # last-layer poolings (qingbert.deploy.inference.Model.encode)
DEFAULT_NPROBE = 16  # IVF lists visited per query (faiss's own default, 1, misses too much)
CHUNK = 1024  # texts encoded between two progress-bar updates


# ---------------------------------------------------------------------------
# vectors


def embed(model, texts: list[str], batch_size: int = 64, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    """Sentence vectors of ``texts`` as an ``(n, dim)`` float32 array: the single encoder call of indexing and
    serving (swap it here for another encoder).  ``model`` is a :class:`qingbert.deploy.inference.Model`; with
    ``normalize`` every row has unit length, so inner products are cosine similarities."""
    vecs = model.encode(list(texts), batch_size=batch_size, pooling=pooling, normalize=normalize)
    return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), -1)


# ---------------------------------------------------------------------------
# the corpus


# ---------------------------------------------------------------------------
# faiss


def _faiss():
    return require("faiss", "semantic search (qingbert index)")


def _first_line(e: Exception) -> str:
    """faiss errors start with the C++ function they came from; keep the message after it."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.split(": ", 1)[-1][:300] if msg.startswith("Error in") else msg[:300]


def new_index(dim: int, factory: str):
    """An empty ``factory`` index for ``dim``-dimensional vectors compared by inner product, taking explicit ids."""
    faiss = _faiss()
    try:
        base = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise QingbertError(f"invalid faiss factory string '{factory}' ({_first_line(e)})",
                            hint="e.g. Flat, HNSW32, IVF256,Flat, IVF256,PQ16") from None
    # IVF indexes store ids themselves; the others get an id map (IDMap2 can also return stored vectors).
    return base if faiss.try_extract_index_ivf(base) is not None else faiss.IndexIDMap2(base)


def train_index(index, vectors: np.ndarray, factory: str) -> None:
    """Train ``index`` on ``vectors`` when the factory needs it; too few vectors for an IVF's lists is a clear
    error saying how many lists the corpus can take."""
    faiss = _faiss()
    if index.is_trained:
        return
    n = len(vectors)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and n < ivf.nlist:
        fit = max(1, n // 39)  # faiss asks for 39 training points per centroid
        raise QingbertError(f"index factory '{factory}' has {ivf.nlist} IVF lists but the corpus has only {n} "
                            f"vectors to train them (at least {ivf.nlist} needed, about {39 * ivf.nlist} advised)",
                            hint=f"use fewer lists (e.g. IVF{fit},Flat) or --factory Flat for a corpus this small")
    try:
        index.train(vectors)
    except RuntimeError as e:
        raise QingbertError(f"cannot train index '{factory}' on {n} vectors ({_first_line(e)})",
                            hint="a smaller factory (fewer lists, fewer PQ bits) or --factory Flat") from None


def _set_search_params(index, nprobe: int | None) -> None:
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = max(1, min(int(nprobe or DEFAULT_NPROBE), ivf.nlist))


# ---------------------------------------------------------------------------
# build


def _encode_all(model, texts: list[str], batch_size: int, pooling: str, progress: bool) -> np.ndarray:
    """Vectors of every text, in chunks so a progress bar can follow large corpora."""
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(texts), desc="encode", unit="text", unit_scale=True, leave=False,
              disable=None if progress else True) as bar:
        for lo in range(0, len(texts), CHUNK):
            chunk = texts[lo:lo + CHUNK]
            out.append(embed(model, chunk, batch_size=batch_size, pooling=pooling))
            bar.update(len(chunk))
    return np.concatenate(out, axis=0)


def build_index(model_dir: str | Path, corpus: str | Path, out: str | Path, factory: str = "Flat",
                batch_size: int = 64, pooling: str = "mean", backend: str | None = None, overwrite: bool = False,
                progress: bool = True, model=None, text_field: str = "text") -> dict:
    """Encode every text of ``corpus`` (one per line, or ``.jsonl`` objects:
    :func:`qingbert.data.corpus.read_documents`) with the model in ``model_dir`` and write a faiss index folder
    ``out``.

    ``factory`` is a faiss index-factory string (``Flat``: exact; ``HNSW32``: graph, fast and no training;
    ``IVF<n>,Flat`` / ``IVF<n>,PQ<m>``: trained on the corpus itself, so it needs at least ``n`` texts).
    ``model``: an already loaded :class:`qingbert.deploy.inference.Model` of ``model_dir`` (else it is loaded on
    ``backend``).  Returns the manifest record."""
    if pooling not in POOLINGS:
        raise QingbertError(f"unknown pooling '{pooling}'", hint=" or ".join(POOLINGS))
    if batch_size < 1:
        raise QingbertError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out)
    t0 = time.perf_counter()
    texts, lines, empty, fields = read_documents(corpus, text_field)
    inputs = {"model folder": model_dir, "corpus": corpus}
    check_out_folder(out, overwrite, what="a qingbert index", fmt=FORMAT, inputs=inputs)  # before the long encode
    if model is None:
        model = load(model_dir, backend=backend)
    vectors = _encode_all(model, texts, batch_size, pooling, progress)
    t_encode = time.perf_counter() - t0
    index = new_index(vectors.shape[1], factory)
    train_index(index, vectors, factory)
    index.add_with_ids(vectors, np.arange(len(texts), dtype=np.int64))

    record = {
        "format": FORMAT,
        "model": str(Path(model_dir).resolve()),
        "backend": getattr(model, "backend", None),
        "corpus": str(Path(corpus).resolve()),
        "text_field": text_field if Path(corpus).suffix.lower() in JSONL_SUFFIXES else None,
        "factory": factory,
        "metric": "inner_product",
        "pooling": pooling,
        "normalized": True,
        "count": int(index.ntotal),
        "dim": int(vectors.shape[1]),
        "lines": len(lines) + len(empty),
        "skipped": {"empty_lines": len(empty), "first_empty_lines": empty[:20]},
        "seconds": {"encode": round(t_encode, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    with replace_folder(out, overwrite, what="a qingbert index", fmt=FORMAT, inputs=inputs) as stage:
        _faiss().write_index(index, str(stage / INDEX_FILE))
        with open(stage / TEXTS_FILE, "w", encoding="utf-8") as fh:
            for i, (line, text, extra) in enumerate(zip(lines, texts, fields)):
                rec = {"id": i, "line": line, "text": text, **({"fields": extra} if extra else {})}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        write_manifest(stage, record)
    return record


# ---------------------------------------------------------------------------
# load and search


class SemanticIndex:
    """A loaded index folder: ``search(queries, k)`` for texts or vectors.

    Text queries are encoded by ``encoder``: a :class:`qingbert.deploy.inference.Model`, a callable ``texts -> (n, dim)
    vectors``, or ``None`` (the model the manifest names, loaded on first use)."""

    def __init__(self, folder: str | Path, encoder=None, backend: str | None = None, nprobe: int | None = None):
        self.folder = Path(folder)
        m = read_manifest(self.folder)
        if not self.folder.is_dir() or m is None or m.get("format") != FORMAT:
            raise QingbertError(f"{self.folder}: not an index folder (no qingbert index manifest.json)",
                                hint="build one with `qingbert index build`")
        self.manifest = m
        for name in (INDEX_FILE, TEXTS_FILE):
            if not (self.folder / name).exists():
                raise QingbertError(f"{self.folder}: {name} is missing", hint="rebuild with `qingbert index build`")
        try:
            self.index = _faiss().read_index(str(self.folder / INDEX_FILE))
        except RuntimeError as e:
            raise QingbertError(f"{self.folder / INDEX_FILE}: faiss cannot read it ({_first_line(e)})") from None
        self.texts = self._read_texts()
        if self.index.ntotal != len(self.texts):
            raise QingbertError(f"{self.folder}: {self.index.ntotal} vectors but {len(self.texts)} texts",
                                hint="rebuild with `qingbert index build`")
        _set_search_params(self.index, nprobe)
        self.pooling = m.get("pooling", "mean")
        self.backend = backend
        self._encoder = encoder

    def _read_texts(self) -> dict[int, str]:
        texts = {}
        self.fields: dict[int, dict] = {}
        with open(self.folder / TEXTS_FILE, encoding="utf-8") as fh:
            for rec in map(json.loads, fh):
                texts[int(rec["id"])] = rec["text"]
                if rec.get("fields"):
                    self.fields[int(rec["id"])] = rec["fields"]
        return texts

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __repr__(self) -> str:
        return f"SemanticIndex({str(self.folder)!r}, size={len(self)}, factory={self.manifest.get('factory')!r})"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Query vectors for ``texts`` with the index's model and pooling."""
        if self._encoder is None:
            model_dir = self.manifest.get("model")
            if not model_dir or not Path(model_dir).is_dir():
                raise QingbertError(f"{self.folder}: the model it was built with ('{model_dir}') is not there",
                                    hint="pass the model (encoder=...) to load_index, or search with vectors")
            self._encoder = load(model_dir, backend=self.backend)
        if callable(self._encoder) and not hasattr(self._encoder, "encode"):
            return np.asarray(self._encoder(list(texts)), dtype=np.float32)
        return embed(self._encoder, texts, pooling=self.pooling)

    def search(self, queries, k: int = 5) -> list[list[dict]]:
        """Top-``k`` hits per query: ``[[{"id", "text", "score"}, ...], ...]``, best first (score = cosine); hits
        of a ``.jsonl`` corpus also carry ``fields``, the other members of the text's JSON object.

        ``queries``: a list of texts (a single ``str`` is one query), or an ``(n, dim)`` / ``(dim,)`` array of
        vectors (normalised here, as the indexed ones are)."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, np.ndarray):
            vectors = queries
        else:
            queries = list(queries)
            if not all(isinstance(q, str) for q in queries):
                raise QingbertError("search() takes a list of texts or an array of vectors")
            vectors = self.encode(queries) if queries else np.zeros((0, self.dim), dtype=np.float32)
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Top-``k`` hits for each row of ``vectors`` (see :meth:`search`)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise QingbertError(f"k must be a positive integer, got {k!r}")
        x = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise QingbertError(f"query vectors have shape {tuple(x.shape)}; this index holds {self.dim}-dimensional "
                                "vectors")
        if not len(x):
            return []
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        scores, ids = self.index.search(x, min(k, len(self)))
        return [[{"id": int(i), "text": self.texts[int(i)], "score": float(s),
                  **({"fields": self.fields[int(i)]} if int(i) in self.fields else {})}
                 for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def load_index(folder: str | Path, encoder=None, backend: str | None = None, nprobe: int | None = None
               ) -> SemanticIndex:
    """Open an index folder written by :func:`build_index` (see :class:`SemanticIndex`)."""
    return SemanticIndex(folder, encoder=encoder, backend=backend, nprobe=nprobe)


# ---------------------------------------------------------------------------
# command line (wired into ``qingbert`` by cli.py: ``add_cli(sub)`` and ``run_cli(args)``)


__all__ = ["build_index", "load_index", "SemanticIndex", "embed", "new_index", "train_index", "FORMAT", "INDEX_FILE",
           "TEXTS_FILE"]
