"""Training-set indexes: ``indexes/NAME/`` holds everything needed to match a generation to
the training item it reproduces.

Layout (one folder per index):
- ``manifest.json``: embedder and its weights hash, preprocessing, dimensions, counts, the
  FAISS index kinds (with IVF-PQ recall@10 against exact search), skipped files, source, build time;
- ``items.parquet``: ``item_id`` (the key in the source), ``source_path``, ``caption``, ``sha256``,
  ``phash``, ``dhash`` (row i is FAISS id i);
- ``image.index``, ``text.index``: CLIP image and caption embeddings, inner product on normalized
  vectors (exact below ``exact_below`` items, IVF-PQ above); ``phash.index``: binary pHashes;
- ``image_emb.npy``, ``text_emb.npy``: the embeddings themselves, so ``--append`` never re-embeds;
- ``thumbnails.npy``: uint8 [N, S, S, 3] thumbnails for pixel verification (memory-mapped).

Searches that propose training images for a generation return one row per *distinct* image
(sha256), deepened past copies: an image repeated 200 times fills 200 rows of a plain search. Pixel
neighbours (thumbnails averaged down to ``PIXEL_GRID`` x ``PIXEL_GRID``, exact l2) propose what
CLIP misses: a small or domain-specific CLIP can rank a near-copy past its 100th neighbour
(docs/CALIBRATION.md, session 18).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scanner import features
from scanner.config import require_int
from scanner.distributed import LocalPool, Pool
from scanner.errors import MemscanError, check_folder, input_error
from scanner.inputs import plain_name
from scanner.models.base import ImageTextEmbedder
from scanner.sources import SourceFormat, SourceItem, iter_source

DEFAULT_ROOT = Path("indexes")
PIXEL_GRID = 8  # pixel neighbours compare thumbnails averaged down to 8 x 8 (192 values)


@dataclass(frozen=True)
class IndexConfig:
    thumbnail_size: int = 64
    exact_below: int = 200_000       # above this many items, image and caption indexes are IVF-PQ
    pq_bytes_per_dim: float = 0.125  # PQ code size: one byte per 8 dimensions (64 bytes for 512-d)
    nprobe: int = 64
    batch_size: int = 256

    def __post_init__(self) -> None:
        require_int("thumbnail_size", self.thumbnail_size, 8)
        require_int("nprobe", self.nprobe, 1)
        require_int("batch_size", self.batch_size, 1)


def index_dir(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """An index folder given as a path (it holds a manifest), else the index called ``name``
    under ``root``: then ``name`` must be a plain name."""
    path = Path(name)
    if path.is_dir() and (path / "manifest.json").exists():
        return path
    return root / plain_name(name, "an index name (or a folder holding manifest.json)")


def build_vector_index(vectors: np.ndarray, config: IndexConfig, rng_seed: int = 0) -> tuple[object, dict]:
    """Exact inner-product search for small sets; a trained IVF-PQ index (with its measured
    recall@10 against exact search) for large ones."""
    import faiss

    n, dim = vectors.shape
    if n < config.exact_below:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"kind": "Flat", "metric": "inner_product"}
    nlist = int(np.sqrt(n))  # about 1,000 lists for a million items; nprobe searches a few percent
    m = max(1, int(dim * config.pq_bytes_per_dim))
    while dim % m:
        m -= 1
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
    if gpu_count():  # faiss-gpu (the gpu extra): the coarse k-means, the costly part of training, on every GPU
        faiss.extract_index_ivf(index).clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    rng = np.random.default_rng(rng_seed)
    train = vectors[rng.choice(n, size=min(n, 50 * nlist), replace=False)]
    index.train(train)
    index.add(vectors)
    index.nprobe = config.nprobe
    recall = ivf_recall_at_10(index, vectors, rng)
    return index, {"kind": f"IVF{nlist},PQ{m}", "metric": "inner_product", "nprobe": config.nprobe, "recall_at_10": recall}


def gpu_count() -> int:
    """GPUs FAISS can use: zero with faiss-cpu."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def search_reranked(index, vectors: np.ndarray, queries: np.ndarray, k: int, shortlist: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product. An approximate (IVF-PQ) index proposes ``shortlist * k`` items and the
    stored full vectors (memory-mapped) re-rank them exactly; an exact index answers directly."""
    if "IVF" not in type(index).__name__ and not hasattr(index, "nprobe"):
        return index.search(queries, k)
    _, candidates = index.search(queries, k * shortlist)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found = found[found >= 0]
        exact = np.asarray(vectors[np.sort(found)], np.float32) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        scores[row, :len(order)], ids[row, :len(order)] = exact[order], np.sort(found)[order]
    return scores, ids


def ivf_recall_at_10(index, vectors: np.ndarray, rng: np.random.Generator, queries: int = 1000) -> float:
    """Share of the exact top-10 neighbours that the approximate index (with re-ranking) returns."""
    import faiss

    sample = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(sample, 10)
    _, found = search_reranked(index, vectors, sample, 10)
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]))


def decode(data: bytes) -> tuple[np.ndarray | None, str]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB")), ""
    except Exception as error:  # PIL raises many kinds for truncated or corrupt files
        return None, f"corrupt image: {type(error).__name__}"


@dataclass(frozen=True)
class RawItem:
    """A source item with its bytes read (by the driver; decoding and embedding happen on workers)."""

    key: str
    source_path: str
    caption: str
    data: bytes
    problem: str = ""  # why the bytes could not be read

    def decoded(self) -> tuple[np.ndarray | None, str]:
        """RGB pixels, or None and the reason (unreadable, corrupt)."""
        return decode(self.data) if not self.problem else (None, self.problem)


@dataclass(frozen=True)
class EmbeddedChunk:
    rows: list[dict]
    thumbnails: np.ndarray
    image_vectors: np.ndarray
    text_vectors: np.ndarray
    skipped: list[dict]


def read_chunks(items: Iterable[SourceItem], skip: set[str], size: int) -> Iterator[list[RawItem]]:
    chunk: list[RawItem] = []
    for item in items:
        if item.key in skip:
            continue
        try:
            chunk.append(RawItem(item.key, item.source_path, item.caption, item.read_bytes()))
        except OSError as error:
            chunk.append(RawItem(item.key, item.source_path, item.caption, b"", f"unreadable: {error.strerror or error}"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def embed_chunk(thumbnail_size: int, embedder: ImageTextEmbedder, chunk: Sequence[RawItem]) -> EmbeddedChunk:
    """Decode, hash, thumbnail and embed a chunk; what cannot be decoded is listed, not raised."""
    rows, thumbnails, images, skipped = [], [], [], []
    for item in chunk:
        image, problem = item.decoded()
        if image is None:
            skipped.append({"path": item.source_path, "reason": problem})
            continue
        phash, dhash = features.perceptual_hashes(image)
        rows.append({"item_id": item.key, "source_path": item.source_path, "caption": item.caption,
                     "sha256": hashlib.sha256(item.data).hexdigest(), "phash": phash, "dhash": dhash,
                     "width": int(image.shape[1]), "height": int(image.shape[0])})
        thumbnails.append(features.resize(image, thumbnail_size))
        images.append(image)
    if not rows:
        empty = np.zeros((0, embedder.dim), np.float32)
        return EmbeddedChunk([], np.zeros((0, thumbnail_size, thumbnail_size, 3), np.uint8), empty, empty, skipped)
    # images of mixed sizes go through the embedder one by one (its preprocessing resizes them)
    if len({i.shape for i in images}) > 1:
        image_vectors = np.concatenate([embedder.embed_images(image[None]) for image in images])
    else:
        image_vectors = embedder.embed_images(np.stack(images))
    text_vectors = embedder.embed_texts([r["caption"] for r in rows])
    return EmbeddedChunk(rows, np.stack(thumbnails), image_vectors.astype(np.float32), text_vectors.astype(np.float32), skipped)


def build_index(source: Path, name: str, embedder: ImageTextEmbedder, config: IndexConfig = IndexConfig(),
                root: Path = DEFAULT_ROOT, append: bool = False, overwrite: bool = False,
                source_format: SourceFormat = SourceFormat(),
                on_progress: Callable[[int], None] | None = None, pool: Pool | None = None) -> dict:
    """Build (or extend) ``root/name`` from a source; returns the manifest. Chunks of items are
    embedded on ``pool`` (Ray workers each holding ``embedder``) or, by default, here. ``name``
    must be a plain name, and only an index (a folder with a manifest) is ever replaced."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = check_folder(root, "index root") / plain_name(name, "an index name")  # before any embedding is spent
    if target.is_symlink() or (target.exists() and not (target / "manifest.json").is_file()):
        raise input_error(target, "exists and is not a memscan index folder (a symlink, or no manifest.json); not touching it")
    if target.exists() and not (append or overwrite):
        raise input_error(target, "an index of this name exists; use --overwrite to replace it or --append to extend it")
    if append and not (target / "manifest.json").exists():
        raise input_error(target, "no index to append to")
    began = time.perf_counter()
    previous = json.loads((target / "manifest.json").read_text()) if append else None
    if previous and previous["embedder_hash"] != embedder.model_hash:
        raise input_error(target, "was built with another embedder; appending would mix embedding spaces")
    if previous:
        config = IndexConfig(**{**asdict(config), "thumbnail_size": previous["thumbnail_size"]})

    known_keys = set(pq.read_table(target / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()) if previous else set()
    chunks = read_chunks(iter_source(source, source_format), known_keys, config.batch_size)
    embedded: dict[int, EmbeddedChunk] = {}
    for position, chunk in (pool or LocalPool(embedder)).imap_unordered(functools.partial(embed_chunk, config.thumbnail_size), chunks):
        embedded[position] = chunk
        if on_progress:
            on_progress(len(chunk.rows) + len(chunk.skipped))
    in_order = [embedded[position] for position in sorted(embedded)]  # row i is FAISS id i, in source order
    rows = [row for chunk in in_order for row in chunk.rows]
    skipped = [entry for chunk in in_order for entry in chunk.skipped]
    if not rows and not previous:
        raise input_error(source, f"no readable images found ({len(skipped)} skipped)")

    dim = int(embedder.dim)
    new_images = np.concatenate([c.image_vectors for c in in_order] + [np.zeros((0, dim), np.float32)])
    new_texts = np.concatenate([c.text_vectors for c in in_order] + [np.zeros((0, dim), np.float32)])
    new_thumbnails = np.concatenate([c.thumbnails for c in in_order] +
                                    [np.zeros((0, config.thumbnail_size, config.thumbnail_size, 3), np.uint8)])
    schema = pa.schema([("item_id", pa.string()), ("source_path", pa.string()), ("caption", pa.string()),
                        ("sha256", pa.string()), ("phash", pa.uint64()), ("dhash", pa.uint64()),
                        ("width", pa.int32()), ("height", pa.int32())])
    items = pa.Table.from_pylist(rows, schema=schema)
    staging = target.with_name(f".{name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if previous:
        items = pa.concat_tables([pq.read_table(target / "items.parquet"), items])
        new_images = np.concatenate([np.load(target / "image_emb.npy"), new_images])
        new_texts = np.concatenate([np.load(target / "text_emb.npy"), new_texts])
        new_thumbnails = np.concatenate([np.load(target / "thumbnails.npy"), new_thumbnails])
        skipped = previous["skipped"] + skipped
    pq.write_table(items, staging / "items.parquet")
    np.save(staging / "image_emb.npy", new_images)
    np.save(staging / "text_emb.npy", new_texts)
    np.save(staging / "thumbnails.npy", new_thumbnails)
    image_index, image_info = build_vector_index(new_images, config)
    text_index, text_info = build_vector_index(new_texts, config)
    faiss.write_index(image_index, str(staging / "image.index"))
    faiss.write_index(text_index, str(staging / "text.index"))
    hash_index = faiss.IndexBinaryFlat(64)
    hash_index.add(hash_codes(items.column("phash").to_numpy()))
    faiss.write_index_binary(hash_index, str(staging / "phash.index"))
    manifest = {
        "name": name, "format": 1, "source": str(Path(source).resolve()),
        "sources": (previous["sources"] if previous else []) + [str(Path(source).resolve())],
        "embedder": embedder.model_ref, "embedder_hash": embedder.model_hash,
        "embedder_preprocess": getattr(embedder, "preprocess_cfg", {}), "dim": int(embedder.dim),
        "thumbnail_size": config.thumbnail_size, "counts": {"items": items.num_rows, "skipped": len(skipped)},
        "skipped": skipped, "image_index": image_info, "text_index": text_info,
        "hash_index": {"kind": "BinaryFlat", "bits": 64, "hash": "phash"},
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - began, 2),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    # swap the finished folder in: a build that dies never leaves a half-written index under NAME
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return manifest


def pixel_vectors(thumbnails: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] uint8 -> [N, PIXEL_GRID^2 * 3] float32 block means on [0, 1] (the last S mod PIXEL_GRID
    rows and columns left out)."""
    n, block = len(thumbnails), thumbnails.shape[1] // PIXEL_GRID
    side = block * PIXEL_GRID
    grid = np.asarray(thumbnails[:, :side, :side], np.float32).reshape(n, PIXEL_GRID, block, PIXEL_GRID, block, 3).mean(axis=(2, 4))
    return np.ascontiguousarray(grid.reshape(n, -1) / 255.0)


def hash_codes(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes as FAISS binary codes (8 bytes each, most significant first)."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8))


def caption_key(text: str) -> str:
    """A caption as a prompt is compared with it: case and runs of whitespace aside."""
    return " ".join(text.split()).casefold()


class TrainingIndex:
    """A built index, opened read-only (thumbnails memory-mapped)."""

    def __init__(self, folder: Path):
        import faiss
        import pyarrow.parquet as pq

        if not (folder / "manifest.json").is_file():
            raise input_error(folder, "not a memscan index (manifest.json is missing); build one with 'memscan index build'")
        self.folder = folder
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
            self.name = self.manifest["name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise input_error(folder / "manifest.json", "not a memscan index manifest") from None
        self.items = pq.read_table(folder / "items.parquet")
        self.item_ids = self.items.column("item_id").to_pylist()
        self.captions = self.items.column("caption").to_pylist()
        self.phashes = self.items.column("phash").to_numpy()
        self.sha256 = self.items.column("sha256").to_pylist()
        self._row_of = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self._image_embeddings = np.load(folder / "image_emb.npy", mmap_mode="r")
        self._text_embeddings = np.load(folder / "text_emb.npy", mmap_mode="r")
        self.thumbnails = np.load(folder / "thumbnails.npy", mmap_mode="r")
        self.image_index = faiss.read_index(str(folder / "image.index"))
        self.text_index = faiss.read_index(str(folder / "text.index"))
        self.hash_index = faiss.read_index_binary(str(folder / "phash.index"))
        self._pixel_index = None  # built on first use from the thumbnails: N x 768 bytes in memory
        self._images_by_caption: dict[str, set[str]] | None = None  # built on first use: caption -> sha256s
        for index, info in ((self.image_index, self.manifest["image_index"]), (self.text_index, self.manifest["text_index"])):
            if "nprobe" in info:
                faiss.extract_index_ivf(index).nprobe = info["nprobe"]

    @classmethod
    def open(cls, name: str, root: Path = DEFAULT_ROOT) -> "TrainingIndex":
        return cls(index_dir(name, root))

    def check_embedder(self, embedder: ImageTextEmbedder) -> None:
        if embedder.model_hash != self.manifest["embedder_hash"]:
            raise MemscanError(f"{self.folder}: built with embedder {self.manifest['embedder']}, not {embedder.model_ref}; "
                               "query it with the same --clip-model")

    def thumbnail(self, item_id: str) -> np.ndarray:
        return np.asarray(self.thumbnails[self._row_of[item_id]])

    def has_item(self, item_id: str) -> bool:
        return item_id in self._row_of

    def image_embedding(self, item_id: str) -> np.ndarray:
        return np.asarray(self._image_embeddings[self._row_of[item_id]], dtype=np.float32)

    def holds_under_caption(self, item_id: str, text: str) -> bool:
        """Whether the training set holds this item's image (any of its copies) under the caption ``text``,
        case and spacing aside: a generation matching it reproduces the image trained with the prompt
        itself, not another caption's (the weaker claim: docs/CALIBRATION.md, session 32)."""
        if self._images_by_caption is None:
            self._images_by_caption = {}
            for caption, sha in zip(self.captions, self.sha256):
                self._images_by_caption.setdefault(caption_key(caption or ""), set()).add(sha)
        return self.sha256[self._row_of[item_id]] in self._images_by_caption.get(caption_key(text), set())

    def search_images(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_reranked(self.image_index, self._image_embeddings,
                               np.ascontiguousarray(embeddings, dtype=np.float32), min(k, len(self.item_ids)))

    def search_texts(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_reranked(self.text_index, self._text_embeddings,
                               np.ascontiguousarray(embeddings, dtype=np.float32), min(k, len(self.item_ids)))

    def search_distinct_images(self, embedding: np.ndarray, n: int) -> np.ndarray:
        """Rows of the ``n`` distinct images (one row per sha256) nearest in CLIP space, nearest first."""
        return self._distinct(lambda depth: self.search_images(embedding[None], depth)[1][0], n)

    def search_distinct_pixels(self, thumbnail: np.ndarray, n: int) -> np.ndarray:
        """Rows of the ``n`` distinct images nearest in pixels (``PIXEL_GRID`` block means), nearest first."""
        if self._pixel_index is None:
            import faiss

            vectors = np.concatenate([pixel_vectors(self.thumbnails[start:start + 65536])
                                      for start in range(0, len(self.item_ids), 65536)] or [np.zeros((0, 3 * PIXEL_GRID ** 2), np.float32)])
            self._pixel_index = faiss.IndexFlatL2(3 * PIXEL_GRID ** 2)
            self._pixel_index.add(vectors)
        query = pixel_vectors(np.asarray(thumbnail)[None])
        return self._distinct(lambda depth: self._pixel_index.search(query, depth)[1][0], n)

    def first_row_of_each_image(self, rows: Iterable[int]) -> dict[str, int]:
        """sha256 -> the first of ``rows`` that carries that image (FAISS's padding, -1, skipped)."""
        first: dict[str, int] = {}
        for row in rows:
            if row >= 0:
                first.setdefault(self.sha256[row], row)
        return first

    def _distinct(self, search: Callable[[int], np.ndarray], n: int) -> np.ndarray:
        """The first row of each distinct image in ``search(depth)``'s order, searching deeper until
        ``n`` distinct images are found or every row has been seen."""
        depth = min(2 * n, len(self.item_ids))
        while True:
            first = self.first_row_of_each_image(search(depth).tolist())
            if len(first) >= n or depth >= len(self.item_ids):
                return np.array(list(first.values())[:n], dtype=np.int64)
            depth = min(4 * depth, len(self.item_ids))

    def search_hashes(self, phash: int, max_hamming: int) -> tuple[np.ndarray, np.ndarray]:
        """Items whose pHash is within ``max_hamming`` bits: (ids, distances)."""
        lims, distances, ids = self.hash_index.range_search(hash_codes(np.array([phash])), max_hamming + 1)
        return ids[lims[0]:lims[1]].astype(np.int64), distances[lims[0]:lims[1]].astype(np.int64)


def index_stats(index: TrainingIndex, top: int = 10, near_cosine: float = 0.98) -> dict:
    """Counts, the caption duplication histogram, and the most duplicated captions and images."""
    captions = Counter(index.captions)
    histogram = Counter(captions.values())
    images = Counter(index.phashes.tolist())
    by_hash = {}
    for i, h in enumerate(index.phashes.tolist()):
        by_hash.setdefault(h, i)
    near = near_duplicate_caption_groups(index, near_cosine, top)
    return {
        "items": len(index.item_ids), "distinct_captions": len(captions), "distinct_images_by_phash": len(images),
        "skipped": index.manifest["counts"]["skipped"],
        "caption_duplication_histogram": dict(sorted(histogram.items())),
        "top_captions": captions.most_common(top),
        "top_near_duplicate_captions": near,
        "top_images": [(index.item_ids[by_hash[h]], index.captions[by_hash[h]], n) for h, n in images.most_common(top)],
    }


def near_duplicate_caption_groups(index: TrainingIndex, min_cosine: float, top: int, neighbours: int = 256) -> list[tuple[str, int]]:
    """Distinct captions with how many items have a caption embedding within ``min_cosine`` of
    theirs (exact repeats included, counted up to ``neighbours``): captions repeated with small
    variations count together."""
    distinct: dict[str, int] = {}
    for i, caption in enumerate(index.captions):
        distinct.setdefault(caption, i)
    ids = list(distinct.values())
    vectors = np.load(index.folder / "text_emb.npy", mmap_mode="r")
    scores, _ = index.search_texts(np.ascontiguousarray(vectors[ids], dtype=np.float32), neighbours)
    counts = (scores >= min_cosine).sum(axis=1)
    order = np.argsort(-counts, kind="stable")[:top]
    return [(index.captions[ids[i]], int(counts[i])) for i in order]


def captions_to_sample(index: TrainingIndex, top: int) -> list[tuple[str, str]]:
    """The ``top`` most duplicated captions, with one item id each (Carlini et al. sampled the
    most duplicated training captions first)."""
    first: dict[str, str] = {}
    for item_id, caption in zip(index.item_ids, index.captions):
        if caption:
            first.setdefault(caption, item_id)
    counts = Counter(c for c in index.captions if c)
    return [(caption, first[caption]) for caption, _ in counts.most_common(top)]
