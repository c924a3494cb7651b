"""Search your own videos: build an index of a folder (``gare index``), query it by text
(``gare search``) and serve a search page (``gare serve``).

Library API::

    from gare.search import build_index, SearchEngine
    report = build_index("my_videos", "runs/demo/gare/best.safetensors", "my_index")
    engine = SearchEngine.open("my_index")
    hits = engine.search("a red circle moves left", k=10)
"""

from .index import IndexReport, build_index
from .search import Hit, QueryError, SearchEngine, validate_k, validate_query
from .store import IndexMismatchError, IndexSettings, SearchIndexError, open_index_meta

__all__ = ["build_index", "IndexReport", "IndexSettings", "IndexMismatchError", "SearchIndexError",
           "open_index_meta", "SearchEngine", "Hit", "QueryError", "validate_query", "validate_k"]
